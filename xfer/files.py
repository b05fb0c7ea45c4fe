"""Your own files as data: folders or CSV lists of images, and CSV/JSONL/folders of texts.

:class:`ImageFolder` reads images lazily: building it lists the files and checks each one's
header (no pixels are kept), and every image is decoded with Pillow, resized and preprocessed only
when the model reads it, batch by batch. It is a map-style ``torch.utils.data.Dataset`` of
``(x, label)`` items (``x`` alone when the files have no labels), so it goes wherever xfer takes
data (``fit``, ``predict``, ``ModelHandler.get_layer_output``) for MXNet and PyTorch source
models alike, and into a ``torch.utils.data.DataLoader`` for decoding in worker processes.

:func:`read_texts` reads texts with their labels into memory (texts are small; the text models
take lists of strings).

Two layouts are read, for both images and texts:

- a folder with one sub-folder per class (``photos/cat/1.jpg``, ``photos/dog/7.jpg``; the
  sub-folder names are the labels, files in nested folders count for their class), or a folder
  of files without sub-folders (no labels: for prediction);
- a table: a CSV of ``path,label`` for images (paths relative to the CSV's folder), a CSV, TSV
  or JSONL file of ``text,label`` for texts. The label column is optional.

A file that cannot be read, or a row that is mislabelled, raises :class:`~xfer.exceptions.DataFileError`
naming the file and why. With ``on_error="skip"`` such files are left out instead and listed in
``.skipped`` (and :meth:`ImageFolder.report`), and one warning says how many.

Examples
--------
>>> from functools import partial
>>> from xfer.files import ImageFolder
>>> from xfer.zoo import efficientnet_lite0_preprocess
>>> train = ImageFolder("photos/train", partial(efficientnet_lite0_preprocess, image_size=224))
... # doctest: +SKIP
>>> repurposer.fit(train)            # labels are the class folder names  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch.utils.data

from xfer.exceptions import (
    DataFileError,
    DataFileNotFoundError,
    InvalidArgumentError,
    InvalidTypeError,
)

logger = logging.getLogger("xfer.files")

#: File name endings read as images in folders (any case). Rows of a CSV may name any file.
IMAGE_EXTENSIONS = (
    ".bmp", ".gif", ".jpeg", ".jpg", ".png", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp",
)  # fmt: skip
#: Table files :func:`read_texts` reads, by ending.
TEXT_TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_ON_ERROR = ("raise", "skip")

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolder",
    "SkippedFile",
    "TextData",
    "read_texts",
    "resize_images",
    "stratified_split",
]


class SkippedFile(NamedTuple):
    """A file (or table row) left out with ``on_error="skip"``.

    Attributes
    ----------
    path : str
        The file, or ``"table.csv line N"`` for a row of a table.
    reason : str
        Why it was left out.
    """

    path: str
    reason: str


def _check_on_error(on_error: Any) -> str:
    if on_error not in _ON_ERROR:
        raise InvalidArgumentError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
    return on_error


class _Problems:
    """Collects bad files: raises at the first one, or records them all (``on_error="skip"``)."""

    def __init__(self, on_error: str, what: str):
        self.on_error = _check_on_error(on_error)
        self.what = what
        self.skipped: list[SkippedFile] = []

    def report(self, path: str | os.PathLike, reason: str, fix: str) -> None:
        if self.on_error == "raise":
            raise DataFileError(
                f"{path}: {reason}. {fix} (or pass on_error='skip' to leave out such files; "
                "they are then listed in .skipped).",
                path=str(path),
                reason=reason,
            )
        self.skipped.append(SkippedFile(str(path), reason))

    def warn(self) -> None:
        if self.skipped:
            shown = "; ".join(f"{s.path} ({s.reason})" for s in self.skipped[:3])
            more = f"; and {len(self.skipped) - 3} more" if len(self.skipped) > 3 else ""
            logger.warning(
                "Skipped %d unreadable or mislabelled %s: %s%s.",
                len(self.skipped), self.what, shown, more,
            )  # fmt: skip


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name in ("__MACOSX", "__pycache__", "Thumbs.db", "desktop.ini")


def _files_under(folder: Path, keep: Callable[[str], bool]) -> list[Path]:
    """Every non-hidden file under ``folder`` (recursively) whose name ``keep`` accepts, sorted."""
    found = []
    for directory, subdirectories, files in os.walk(folder):
        subdirectories[:] = sorted(d for d in subdirectories if not _is_hidden(d))
        found.extend(Path(directory) / f for f in files if not _is_hidden(f) and keep(f))
    return sorted(found)


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not _is_hidden(p.name))


def _scan_folder(
    root: Path, keep: Callable[[str], bool], problems: _Problems, kind: str
) -> tuple[list[Path], list[str] | None]:
    """The files of a folder and their labels (class sub-folder names), or no labels."""
    classes = _class_folders(root)
    top = sorted(
        p for p in root.iterdir() if p.is_file() and not _is_hidden(p.name) and keep(p.name)
    )
    if not classes:
        if not top:
            raise DataFileError(
                f"No {kind} files in {root}: put them in it, or one sub-folder per class"
                + (
                    f" (files ending in {', '.join(IMAGE_EXTENSIONS)})." if kind == "image" else "."
                ),
                path=str(root),
                reason="empty folder",
            )
        return top, None
    for path in top:
        problems.report(
            path,
            "is directly in the data folder, which also has class sub-folders, so it has no class",
            "Move it into the sub-folder of its class",
        )
    paths: list[Path] = []
    labels: list[str] = []
    for folder in classes:
        members = _files_under(folder, keep)
        if not members:
            logger.warning("The class folder %s holds no %s files; it is ignored.", folder, kind)
        paths.extend(members)
        labels.extend([folder.name] * len(members))
    if not paths:
        raise DataFileError(
            f"The class folders of {root} ({', '.join(p.name for p in classes[:5])}) hold no "
            f"{kind} files.",
            path=str(root),
            reason="no files",
        )
    return paths, labels


def _read_table_rows(
    table: Path, columns: Sequence[str], required: str, problems: _Problems
) -> tuple[list[tuple[int, dict[str, Any]]], set[str]]:
    """``(line number, row)`` of a CSV/TSV (with a header) or JSONL file, and the columns it has."""
    kind = TEXT_TABLE_FORMATS.get(table.suffix.lower(), "csv")
    rows: list[tuple[int, dict[str, Any]]] = []
    try:
        with open(table, encoding="utf-8-sig", newline="") as handle:
            if kind == "jsonl":
                present: set[str] = set()
                for number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as error:
                        problems.report(f"{table} line {number}", f"is not valid JSON ({error.msg})",
                                        "Write one JSON object per line")  # fmt: skip
                        continue
                    if not isinstance(row, dict):
                        problems.report(f"{table} line {number}",
                                        f"is a JSON {type(row).__name__}, not an object",
                                        "Write one JSON object per line")  # fmt: skip
                        continue
                    present.update(row)
                    rows.append((number, row))
                return rows, present
            reader = csv.DictReader(handle, delimiter="\t" if kind == "tsv" else ",")
            header = reader.fieldnames or []
            if required not in header:
                raise DataFileError(
                    f"{table} has no column {required!r} in its header row (it has "
                    f"{', '.join(repr(h) for h in header) or 'no header'}). Name the columns in the "
                    f"first row ({', '.join(columns)}), or say which column to read.",
                    path=str(table),
                    reason=f"no column {required!r}",
                )
            for row in reader:
                rows.append((reader.line_num, row))
            return rows, set(header)
    except UnicodeDecodeError as error:
        raise DataFileError(
            f"{table} is not UTF-8 text (byte {error.start}): save it as UTF-8.",
            path=str(table),
            reason="not UTF-8",
        ) from None
    except csv.Error as error:
        raise DataFileError(f"{table} is not a valid CSV file: {error}.", path=str(table),
                            reason=str(error)) from None  # fmt: skip


def _labels_array(labels: list[Any] | None) -> np.ndarray | None:
    if labels is None:
        return None
    kinds = {type(label) for label in labels}
    if len(kinds) > 1 and not kinds <= {int, float}:
        raise DataFileError(
            f"The labels mix types ({', '.join(sorted(k.__name__ for k in kinds))}): give every "
            "example a label of one type (all strings, or all numbers).",
            path="",
            reason="mixed label types",
        )
    return np.asarray(labels)


def stratified_split(
    labels: Any, test_fraction: float = 0.2, random_state: int | None = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a seeded train/test split that holds out ``test_fraction`` of every class.

    Parameters
    ----------
    labels : array-like of shape (n_samples,)
        The label of each example.
    test_fraction : float, default=0.2
        Share of each class held out (rounded; at least one example of every class, and at least
        one left for training).
    random_state : int or None, default=0
        Seed of the split.

    Returns
    -------
    train_index, test_index : ndarray of int
        Sorted positions of the two parts.

    Raises
    ------
    InvalidArgumentError
        A fraction outside (0, 1), or a class with fewer than 2 examples.
    """
    if not isinstance(test_fraction, float) or not 0.0 < test_fraction < 1.0:
        raise InvalidArgumentError(
            f"test_fraction must be a float in (0, 1), got {test_fraction!r}."
        )
    labels = np.asarray(labels)
    rng = np.random.default_rng(random_state)
    test: list[int] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < 2:
            raise InvalidArgumentError(
                f"Class {label!r} has {len(members)} example; a train/test split needs at least 2 "
                "of every class."
            )
        count = min(max(1, round(test_fraction * len(members))), len(members) - 1)
        test.extend(rng.choice(members, size=count, replace=False).tolist())
    test_index = np.sort(np.asarray(test, dtype=np.int64))
    return np.setdiff1d(np.arange(len(labels)), test_index), test_index


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def _pil() -> Any:
    from PIL import Image, ImageOps

    return Image, ImageOps


def resize_images(
    images: Sequence[np.ndarray], image_size: int = 224, mode: str = "stretch", grey: bool = False
) -> np.ndarray:
    """Resize RGB images to ``image_size`` x ``image_size``: the default preprocessing.

    Parameters
    ----------
    images : list of ndarray
        H x W x 3 ``uint8`` images (any sizes), as :class:`ImageFolder` decodes them.
    image_size : int, default=224
        Side of the output.
    mode : {"stretch", "crop"}, default="stretch"
        ``"stretch"``: resize the whole image to S x S. ``"crop"``: resize the short side to S,
        keeping the aspect ratio, and cut the centre S x S.
    grey : bool, default=False
        Return one luminance channel (ITU-R 601-2, as Pillow's ``"L"`` mode) instead of RGB.

    Returns
    -------
    ndarray
        float32, N x C x S x S (channels first; C is 3, or 1 with ``grey``), pixel values 0..255.

    Raises
    ------
    InvalidArgumentError
        An unknown ``mode``.
    """
    if mode not in ("stretch", "crop"):
        raise InvalidArgumentError(f"mode must be 'stretch' or 'crop', got {mode!r}.")
    Image, _ = _pil()
    out = np.empty((len(images), 1 if grey else 3, image_size, image_size), dtype=np.float32)
    for n, pixels in enumerate(images):
        image = Image.fromarray(np.asarray(pixels, dtype=np.uint8))
        if grey:
            image = image.convert("L")
        width, height = image.size
        size = (image_size, image_size)
        box = None
        if mode == "crop":
            scale = image_size / min(width, height)
            size = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
            left, top = (size[0] - image_size) // 2, (size[1] - image_size) // 2
            box = (left, top, left + image_size, top + image_size)
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
        if box is not None:
            image = image.crop(box)
        array = np.asarray(image, dtype=np.float32)
        out[n] = array[None] if grey else array.transpose(2, 0, 1)
    return out


def _default_preprocess(image_size: int) -> Callable[[list[np.ndarray]], np.ndarray]:
    from functools import partial

    return partial(resize_images, image_size=image_size)


class ImageFolder(torch.utils.data.Dataset):
    """Images from a folder (one sub-folder per class) or a CSV of ``path,label``, read lazily.

    Building it lists the files and opens each one's header to check that it is an image (no
    pixels are read). ``dataset[i]`` decodes image ``i`` with Pillow (RGB, EXIF rotation applied,
    large JPEGs decoded at a reduced scale no smaller than ``2 * image_size``) and returns
    ``(preprocess([image])[0], label)``, or the input alone when the files have no labels. Only
    the batch being read is in memory.

    Parameters
    ----------
    source : str or path-like
        A folder with one sub-folder per class (sub-folder names are the labels; files in nested
        folders belong to their class; hidden files and files not ending in
        :data:`IMAGE_EXTENSIONS` are ignored), a folder of images without sub-folders (no
        labels), or a ``.csv`` file with a header row naming ``path_column`` (and optionally
        ``label_column``); relative paths in it are relative to the CSV's folder.
    preprocess : callable, optional
        Turns a list of decoded images (H x W x 3 ``uint8``, sizes as in the files) into the
        model's input, one row per image: the same function you would apply to arrays, e.g.
        ``functools.partial(xfer.zoo.efficientnet_lite0_preprocess, image_size=224)``. Default:
        :func:`resize_images` to ``image_size`` (float32 N x 3 x S x S, pixels 0..255).
    image_size : int, default=224
        Side of the default preprocessing's output, and the scale large JPEGs are decoded at
        (at least twice this).
    path_column, label_column : str, default="path", "label"
        Columns of a CSV source. Without ``label_column`` in the header the images have no labels.
    on_error : {"raise", "skip"}, default="raise"
        What to do with a file that is not a readable image or a row that is mislabelled (a
        missing file, an empty label, a file listed twice with different labels, an image outside
        the class folders): raise :class:`~xfer.exceptions.DataFileError` naming the file and
        why, or leave it out and list it in :attr:`skipped`. With ``"skip"`` every image is also
        decoded once while building, so that truncated files are found before training.

    Attributes
    ----------
    paths : list of str
        The images, in the order they are read (sorted by class, then by path).
    labels : ndarray of str or None
        The label of each image, or None without labels.
    classes : list of str
        The sorted distinct labels (empty without labels).
    skipped : list of SkippedFile
        Files left out with ``on_error="skip"``.

    Raises
    ------
    DataFileNotFoundError
        ``source`` does not exist.
    DataFileError
        No images found, or (with ``on_error="raise"``) a bad file or row.
    InvalidArgumentError
        A bad ``image_size`` or ``on_error``.

    Examples
    --------
    >>> from xfer.files import ImageFolder
    >>> train = ImageFolder("photos/train", image_size=96)  # doctest: +SKIP
    >>> x, label = train[0]                                  # doctest: +SKIP
    >>> x.shape, label                                       # doctest: +SKIP
    ((3, 96, 96), 'cat')
    """

    def __init__(
        self,
        source: str | os.PathLike,
        preprocess: Callable[[list[np.ndarray]], Any] | None = None,
        *,
        image_size: int = 224,
        path_column: str = "path",
        label_column: str = "label",
        on_error: str = "raise",
    ):
        if (
            isinstance(image_size, bool)
            or not isinstance(image_size, (int, np.integer))
            or image_size < 1
        ):
            raise InvalidArgumentError(f"image_size must be a positive int, got {image_size!r}.")
        if preprocess is not None and not callable(preprocess):
            raise InvalidTypeError(
                f"preprocess must be a function of a list of images, got {type(preprocess).__name__}."
            )
        self.source = Path(source)
        self.image_size = int(image_size)
        self.preprocess = preprocess
        self.on_error = _check_on_error(on_error)
        problems = _Problems(on_error, "image files")
        if not self.source.exists():
            raise DataFileNotFoundError(
                f"{self.source} does not exist: give a folder of images (one sub-folder per "
                "class) or a CSV file of path,label."
            )
        if self.source.is_dir():
            paths, labels = _scan_folder(
                self.source, lambda name: name.lower().endswith(IMAGE_EXTENSIONS), problems, "image"
            )
        else:
            paths, labels = self._scan_csv(path_column, label_column, problems)
        keep = [i for i, path in enumerate(paths) if self._check_image(path, problems)]
        self.paths = [str(paths[i]) for i in keep]
        self.labels = None if labels is None else np.asarray([labels[i] for i in keep], dtype=str)
        self.classes = [] if self.labels is None else sorted(set(self.labels.tolist()))
        self.skipped = problems.skipped
        if not self.paths:
            raise DataFileError(
                f"No readable images in {self.source}: all {len(self.skipped)} were left out "
                f"({self.skipped[0].path}: {self.skipped[0].reason}).",
                path=str(self.source),
                reason="no readable images",
            )
        problems.warn()

    # ------------------------------------------------------------------ listing
    def _scan_csv(
        self, path_column: str, label_column: str, problems: _Problems
    ) -> tuple[list[Path], list[str] | None]:
        table = self.source
        rows, columns = _read_table_rows(table, [path_column, label_column], path_column, problems)
        has_labels = label_column in columns
        base = table.parent
        paths: list[Path] = []
        labels: list[str] = []
        seen: dict[Path, tuple[str, int]] = {}
        for number, row in rows:
            where = f"{table} line {number}"
            name = (row.get(path_column) or "").strip()
            if not name:
                problems.report(
                    where,
                    f"has no file name in column {path_column!r}",
                    "Fill it in or delete the row",
                )
                continue
            path = (base / name) if not os.path.isabs(name) else Path(name)
            label = (row.get(label_column) or "").strip() if has_labels else ""
            if has_labels and not label:
                problems.report(where, f"{name} has an empty label", "Give every image its label")
                continue
            if not path.is_file():
                problems.report(
                    where,
                    f"{path} does not exist",
                    "Correct the path (relative to the CSV's folder)",
                )
                continue
            resolved = path.resolve()
            if resolved in seen:
                first_label, first_line = seen[resolved]
                if has_labels and first_label != label:
                    problems.report(
                        where,
                        f"{name} is labelled {label!r} but {first_label!r} on line {first_line}",
                        "Give each image one label",
                    )
                else:
                    logger.info(
                        "%s lists %s again (first on line %d); read once.", where, name, first_line
                    )
                continue
            seen[resolved] = (label, number)
            paths.append(path)
            labels.append(label)
        if not paths and not problems.skipped:
            raise DataFileError(f"{table} lists no images.", path=str(table), reason="no rows")
        return paths, labels if has_labels else None

    def _check_image(self, path: Path, problems: _Problems) -> bool:
        """Open the header (and, with ``on_error="skip"``, decode) ``path``; report a bad file."""
        try:
            if self.on_error == "skip":
                self._decode(path)
            else:
                Image, _ = _pil()
                with Image.open(path) as image:
                    image.size  # noqa: B018 - reading the header is the check
        except Exception as error:  # noqa: BLE001 - any failure to read is a bad file
            problems.report(path, _image_error(error), "Replace or remove the file")
            return False
        return True

    # ------------------------------------------------------------------ reading
    def _decode(self, path: str | Path) -> np.ndarray:
        Image, ImageOps = _pil()
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                target = 2 * self.image_size
                if image.format == "JPEG":
                    image.draft("RGB", (target, target))
                image = ImageOps.exif_transpose(image)
                return np.asarray(image.convert("RGB"))

    def read_image(self, index: int) -> np.ndarray:
        """Image ``index`` decoded as H x W x 3 ``uint8`` RGB, before preprocessing.

        Parameters
        ----------
        index : int
            Position in :attr:`paths`.

        Returns
        -------
        ndarray

        Raises
        ------
        DataFileError
            The file cannot be decoded (truncated, changed since the folder was read).
        """
        path = self.paths[index]
        try:
            return self._decode(path)
        except Exception as error:  # noqa: BLE001
            raise DataFileError(
                f"{path}: {_image_error(error)}. Replace or remove the file, or build the "
                "ImageFolder with on_error='skip' (which decodes every image once first and "
                "leaves out the unreadable ones).",
                path=path,
                reason=_image_error(error),
            ) from error

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Any:
        preprocess = self.preprocess or _default_preprocess(self.image_size)
        x = np.asarray(preprocess([self.read_image(index)]))
        if x.ndim < 1 or x.shape[0] != 1:
            raise InvalidArgumentError(
                f"preprocess must return one row per image; for one image it returned shape "
                f"{x.shape}."
            )
        x = x[0]
        return x if self.labels is None else (x, self.labels[index])

    # ------------------------------------------------------------------ views
    def subset(self, indices: Sequence[int]) -> ImageFolder:
        """The images at ``indices``, with the same preprocessing (no file is read again).

        Parameters
        ----------
        indices : sequence of int
            Positions in :attr:`paths`.

        Returns
        -------
        ImageFolder
        """
        indices = np.asarray(indices, dtype=np.int64)
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view.paths = [self.paths[i] for i in indices]
        view.labels = None if self.labels is None else self.labels[indices]
        view.classes = [] if view.labels is None else sorted(set(view.labels.tolist()))
        view.skipped = list(self.skipped)
        return view

    def split(
        self, test_fraction: float = 0.2, random_state: int | None = 0
    ) -> tuple[ImageFolder, ImageFolder]:
        """Split into (train, test), stratified by label and seeded.

        Parameters
        ----------
        test_fraction : float, default=0.2
            Share of each class (at least one image of every class) held out for the test part.
        random_state : int or None, default=0
            Seed of the split.

        Returns
        -------
        train, test : ImageFolder

        Raises
        ------
        InvalidArgumentError
            No labels, a fraction outside (0, 1), or a class with fewer than 2 images.
        """
        if self.labels is None:
            raise InvalidArgumentError(
                f"{self.source} has no labels, so it cannot be split by class."
            )
        train_index, test_index = stratified_split(self.labels, test_fraction, random_state)
        return self.subset(train_index), self.subset(test_index)

    def report(self) -> str:
        """A text summary: how many images and classes, and every skipped file with its reason.

        Returns
        -------
        str
        """
        lines = [f"{len(self)} images" + (f" of {len(self.classes)} classes" if self.classes else " (no labels)")
                 + f" from {self.source}"]  # fmt: skip
        if self.classes:
            counts = {label: int(np.sum(self.labels == label)) for label in self.classes}
            lines.append("  " + ", ".join(f"{label}: {n}" for label, n in counts.items()))
        if self.skipped:
            lines.append(f"{len(self.skipped)} skipped:")
            lines.extend(f"  {s.path}: {s.reason}" for s in self.skipped)
        return "\n".join(lines)

    def __repr__(self) -> str:
        labels = f"{len(self.classes)} classes" if self.labels is not None else "no labels"
        return f"ImageFolder({str(self.source)!r}, {len(self)} images, {labels})"


def _image_error(error: BaseException) -> str:
    name = type(error).__name__
    if name == "UnidentifiedImageError":
        return "is not an image Pillow can read (unknown format, or not an image)"
    if name in ("DecompressionBombError", "DecompressionBombWarning"):
        return "is too large to decode safely (over Pillow's decompression-bomb limit)"
    if isinstance(error, PermissionError):
        return "cannot be opened (permission denied)"
    message = str(error).strip() or name
    if "truncated" in message.lower():
        return f"is truncated or corrupt ({message})"
    return f"cannot be decoded ({message})"


# --------------------------------------------------------------------------------------------
# Texts
# --------------------------------------------------------------------------------------------


@dataclass
class TextData:
    """Texts read from files, with their labels.

    Attributes
    ----------
    texts : list of str
        The documents.
    labels : ndarray or None
        The label of each text (strings from folders and CSV files; JSON values from JSONL), or
        None when the source has none.
    sources : list of str
        Where each text came from (a file, or ``"table.csv line N"``).
    skipped : list of SkippedFile
        Files or rows left out with ``on_error="skip"``.
    """

    texts: list[str]
    labels: np.ndarray | None
    sources: list[str]
    skipped: list[SkippedFile] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def classes(self) -> list:
        """The sorted distinct labels (empty without labels)."""
        return [] if self.labels is None else sorted(set(self.labels.tolist()))

    def subset(self, indices: Sequence[int]) -> TextData:
        """The texts at ``indices``.

        Parameters
        ----------
        indices : sequence of int
            Positions in :attr:`texts`.

        Returns
        -------
        TextData
        """
        indices = np.asarray(indices, dtype=np.int64)
        return TextData(
            [self.texts[i] for i in indices],
            None if self.labels is None else self.labels[indices],
            [self.sources[i] for i in indices],
            list(self.skipped),
        )


def read_texts(
    source: str | os.PathLike,
    *,
    text_column: str = "text",
    label_column: str = "label",
    on_error: str = "raise",
) -> TextData:
    """Read texts (and labels) from a CSV, TSV or JSONL file, or a folder of one file per text.

    Parameters
    ----------
    source : str or path-like
        A ``.csv``/``.tsv`` file with a header row, a ``.jsonl`` file of one JSON object per
        line, a folder with one sub-folder per class holding one UTF-8 file per text (sub-folder
        names are the labels), or a folder of text files without sub-folders (no labels).
    text_column, label_column : str, default="text", "label"
        Columns (keys, for JSONL) of a table. Without ``label_column`` the texts have no labels.
    on_error : {"raise", "skip"}, default="raise"
        A file that is not UTF-8, an empty text, a row without a label while others have one, a
        line that is not JSON: raise :class:`~xfer.exceptions.DataFileError` naming it and why, or
        leave it out and list it in ``skipped``.

    Returns
    -------
    TextData

    Raises
    ------
    DataFileNotFoundError
        ``source`` does not exist.
    DataFileError
        An unknown table format, no texts, or (with ``on_error="raise"``) a bad file or row.

    Examples
    --------
    >>> from xfer.files import read_texts
    >>> data = read_texts("reviews.csv")                 # doctest: +SKIP
    >>> repurposer.fit(data.texts, data.labels)          # doctest: +SKIP
    """
    source = Path(source)
    problems = _Problems(on_error, "texts")
    if not source.exists():
        raise DataFileNotFoundError(
            f"{source} does not exist: give a CSV/TSV/JSONL file or a folder of text files."
        )
    if source.is_dir():
        result = _texts_from_folder(source, problems)
    else:
        if source.suffix.lower() not in TEXT_TABLE_FORMATS:
            raise DataFileError(
                f"{source}: unknown text file format {source.suffix!r}; read_texts reads "
                f"{', '.join(TEXT_TABLE_FORMATS)} files and folders of text files.",
                path=str(source),
                reason="unknown format",
            )
        result = _texts_from_table(source, text_column, label_column, problems)
    if not result.texts:
        raise DataFileError(f"No texts in {source}.", path=str(source), reason="no texts")
    result.skipped = problems.skipped
    problems.warn()
    return result


def _texts_from_folder(root: Path, problems: _Problems) -> TextData:
    paths, labels = _scan_folder(root, lambda name: True, problems, "text")
    texts, sources, kept_labels = [], [], []
    for i, path in enumerate(paths):
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as error:
            problems.report(path, f"is not UTF-8 text (byte {error.start})", "Save it as UTF-8")
            continue
        except OSError as error:
            problems.report(path, f"cannot be read ({error.strerror or error})", "Check the file")
            continue
        if not text.strip():
            problems.report(path, "is empty", "Remove it")
            continue
        texts.append(text)
        sources.append(str(path))
        if labels is not None:
            kept_labels.append(labels[i])
    return TextData(texts, None if labels is None else _labels_array(kept_labels), sources)


def _texts_from_table(
    table: Path, text_column: str, label_column: str, problems: _Problems
) -> TextData:
    rows, columns = _read_table_rows(table, [text_column, label_column], text_column, problems)
    if rows and text_column not in columns:
        raise DataFileError(
            f"{table} has no {text_column!r} key in any line (keys: "
            f"{', '.join(sorted(map(repr, columns)))}). Say which key holds the text.",
            path=str(table),
            reason=f"no key {text_column!r}",
        )
    has_labels = label_column in columns
    texts, labels, sources = [], [], []
    for number, row in rows:
        where = f"{table} line {number}"
        text = row.get(text_column)
        if not isinstance(text, str):
            problems.report(where, f"has no text in {text_column!r}" if text is None
                            else f"has a {type(text).__name__} in {text_column!r}, not a string",
                            "Give every row its text")  # fmt: skip
            continue
        if not text.strip():
            problems.report(where, "has an empty text", "Remove the row")
            continue
        if has_labels:
            label = row.get(label_column)
            if label is None or (isinstance(label, str) and not label.strip()):
                problems.report(where, "has no label", "Give every row its label")
                continue
            if not isinstance(label, (str, int, float)) or isinstance(label, bool):
                problems.report(where, f"has a label of type {type(label).__name__}",
                                "Labels must be strings or numbers")  # fmt: skip
                continue
            labels.append(label.strip() if isinstance(label, str) else label)
        texts.append(text)
        sources.append(where)
    return TextData(texts, _labels_array(labels) if has_labels else None, sources)
