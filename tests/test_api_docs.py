"""Every public name has an entry on an API page, and every public callable a numpydoc docstring.

The public surface is ``xfer.__all__`` plus the ``__all__`` of every submodule reachable from
``import xfer`` (``xfer._SUBMODULES``). A name is on a page when a ``docs/api/*.rst`` directive
names it (``autoclass``, ``autofunction``, ``autodata``, ``autoexception``) or an ``automodule``
of its module lists it (or all members). A public callable (a function in ``__all__``, a public
method an xfer class defines, a class's constructor) documents every parameter in a
``Parameters`` section, and a ``Returns`` (or ``Yields``) section when it returns something.
Names added later must come with their docs: this test lists what is missing.
"""

from __future__ import annotations

import importlib
import inspect
import re
import types
from pathlib import Path
from typing import Any

import pytest
from numpydoc.docscrape import NumpyDocString

import xfer

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "docs" / "api"
PUBLIC_MODULES = ["xfer", *(f"xfer.{name}" for name in xfer._SUBMODULES)]
DIRECTIVE = re.compile(r"^\.\. (auto\w+):: (\S+)\n((?:[ \t]+:.*\n)*)", re.M)


def _resolve(dotted: str) -> Any:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            obj = getattr(obj, part)
        return obj
    raise ImportError(dotted)


def _members_option(options: str) -> list[str] | None | bool:
    """The ``:members:`` option: a list of names, True for all, None when absent."""
    match = re.search(r":members:(.*)", options)
    if not match:
        return None
    names = [n.strip() for n in match.group(1).split(",") if n.strip()]
    return names or True


def documented() -> tuple[set[int], set[str]]:
    """Ids of the objects the API pages document, and the modules with an ``automodule``."""
    objects: set[int] = set()
    modules: set[str] = set()
    for page in API.glob("*.rst"):
        for kind, target, options in DIRECTIVE.findall(page.read_text()):
            obj = _resolve(target)
            members = _members_option(options)
            if kind == "automodule":
                modules.add(target)
                names = getattr(obj, "__all__", []) if members is True else members or []
                objects.update(id(getattr(obj, name)) for name in names)
            else:
                objects.add(id(obj))
    return objects, modules


def public_names() -> list[tuple[str, Any]]:
    found = {}
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if not isinstance(obj, types.ModuleType):
                found.setdefault(id(obj), (f"{module_name}.{name}", obj))
    return list(found.values())


def test_every_public_module_has_an_api_page():
    _, modules = documented()
    aliases = {"xfer.meta_model_repurposer"}  # Xfer's module path; its names are on other pages
    missing = [m for m in PUBLIC_MODULES if m not in modules and m not in aliases]
    assert not missing, f"add an API page (docs/api/*.rst with automodule) for {missing}"


def test_every_public_name_is_on_an_api_page():
    objects, _ = documented()
    missing = [name for name, obj in public_names() if id(obj) not in objects]
    assert not missing, f"document these on an API page (docs/api/*.rst): {missing}"


# ------------------------------------------------------------------------------ docstrings


def _own_methods(cls: type) -> list[tuple[str, Any]]:
    methods = []
    for name, member in vars(cls).items():
        if name.startswith("_") or name.startswith("test_"):
            continue
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if inspect.isfunction(member):
            methods.append((f"{cls.__module__}.{cls.__qualname__}.{name}", member))
    return methods


def public_callables() -> list[tuple[str, Any, type | None]]:
    """(name, function, class whose constructor it is or None) for everything to check."""
    found: dict[int, tuple[str, Any, type | None]] = {}
    for name, obj in public_names():
        if inspect.isclass(obj):
            if not obj.__module__.startswith("xfer"):
                continue
            init = vars(obj).get("__init__")
            fields = getattr(obj, "_fields", None) or getattr(obj, "__dataclass_fields__", None)
            if inspect.isfunction(init) or fields:
                found.setdefault(id(obj), (name, obj, obj))
            for method_name, method in _own_methods(obj):
                found.setdefault(id(method), (method_name, method, None))
        elif inspect.isfunction(obj):
            found.setdefault(id(obj), (name, obj, None))
    return sorted(found.values(), key=lambda item: item[0])


def _parameters(function: Any) -> list[str]:
    skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [
        p.name for p in inspect.signature(function).parameters.values()
        if p.name not in ("self", "cls") and p.kind not in skip
    ]  # fmt: skip


def _documented_names(section: list) -> set[str]:
    names = set()
    for entry in section:
        names.update(part.strip().lstrip("*") for part in entry.name.split(","))
    return names


def docstring_problems(name: str, obj: Any, constructor_of: type | None) -> list[str]:
    doc = inspect.getdoc(obj) if constructor_of is None else inspect.getdoc(constructor_of)
    if not doc:
        return [f"{name}: no docstring"]
    parsed = NumpyDocString(doc)
    problems = []
    if constructor_of is not None:
        fields = getattr(obj, "_fields", None) or list(getattr(obj, "__dataclass_fields__", {}))
        params = list(fields) if fields and "__init__" not in vars(obj) else _parameters(obj.__init__)
        have = set()
        for cls in obj.__mro__:  # "see the base class" is fine for inherited parameters
            if cls.__module__.startswith("xfer") and inspect.getdoc(cls):
                base = NumpyDocString(inspect.getdoc(cls))
                have |= _documented_names(base["Parameters"]) | _documented_names(base["Attributes"])
    else:
        params = _parameters(obj)
        have = _documented_names(parsed["Parameters"])
    missing = [p for p in params if p not in have]
    if missing:
        problems.append(f"{name}: parameters {missing} not in its Parameters section")
    if constructor_of is None:
        annotation = inspect.signature(obj).return_annotation
        returns = annotation not in (inspect.Signature.empty, None, "None")
        if returns and not (parsed["Returns"] or parsed["Yields"]):
            problems.append(f"{name}: no Returns section")
    return problems


def test_every_public_callable_has_numpydoc_parameters_and_returns():
    problems = [p for item in public_callables() for p in docstring_problems(*item)]
    assert not problems, f"{len(problems)} docstrings to complete:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ('"""Add.\n\n    Parameters\n    ----------\n    a : int\n    """', []),
        ('"""Add."""', ["f: parameters ['a'] not in its Parameters section"]),
    ],
)
def test_the_docstring_check_can_fail(doc, expected):
    namespace: dict = {}
    exec(f"def f(a) -> None:\n    {doc}\n", namespace)
    assert docstring_problems("f", namespace["f"], None) == expected
    exec(f"def f(a) -> int:\n    {doc}\n", namespace)
    assert "f: no Returns section" in docstring_problems("f", namespace["f"], None)
