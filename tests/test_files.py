"""Images and texts from the user's own files (xfer.files), on real files each test writes."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import xfer
from xfer._mxnet import mx
from xfer.exceptions import DataFileError, DataFileNotFoundError, InvalidArgumentError
from xfer.files import ImageFolder, SkippedFile, read_texts, resize_images
from xfer.model_handler import ModelHandler
from xfer.testing import IMAGE_COLOURS, write_image_folder

COLOURS = IMAGE_COLOURS


def write_image(path: Path, colour, size=(20, 16), seed=0, mode="RGB") -> Path:
    """A noisy single-colour image (width x height ``size``) in the format of ``path``'s ending."""
    rng = np.random.default_rng(seed)
    pixels = (np.array(colour) + rng.integers(-30, 30, (size[1], size[0], 3))).clip(0, 255)
    image = Image.fromarray(pixels.astype(np.uint8)).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def write_folder(root: Path, per_class=4, classes=("red", "blue")) -> Path:
    return write_image_folder(root, classes, per_class)


def torch_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 36, 3)
    ).eval()


def mxnet_cnn() -> mx.mod.Module:
    mx.random.seed(0)
    net = mx.sym.Convolution(mx.sym.var("data"), num_filter=4, kernel=(3, 3), name="conv1")
    net = mx.sym.Activation(net, act_type="relu", name="relu1")
    net = mx.sym.FullyConnected(mx.sym.Flatten(net), num_hidden=3, name="fc1")
    module = mx.mod.Module(mx.sym.SoftmaxOutput(net, name="softmax"), context=mx.cpu())
    module.bind(data_shapes=[("data", (2, 3, 8, 8))], label_shapes=[("softmax_label", (2,))])
    module.init_params(mx.init.Xavier())
    return module


def scaled(images):
    """A user's own preprocessing: 8 x 8, channels first, pixels in [0, 1]."""
    return resize_images(images, 8) / 255.0


# ----------------------------------------------------------------------------- image folders


def test_class_folders_give_labels_paths_and_inputs(tmp_path):
    root = write_folder(tmp_path / "photos")
    (root / "red" / "notes.txt").write_text("not an image, ignored")
    (root / ".DS_Store").write_bytes(b"\0")
    write_image(root / "red" / "more" / "nested.PNG", COLOURS["red"])  # nested folders: same class
    data = ImageFolder(root, image_size=12)
    assert len(data) == 9 and data.classes == ["blue", "red"]
    assert data.labels.tolist() == ["blue"] * 4 + ["red"] * 5
    assert data.paths[4] == str(root / "red" / "0.jpg")
    assert data.paths[-1] == str(root / "red" / "more" / "nested.PNG")
    x, label = data[0]
    assert x.shape == (3, 12, 12) and x.dtype == np.float32 and label == "blue"
    assert 100 < x[2].mean() < 255 and x[0].mean() < 100  # blue channel high, pixels 0..255
    assert repr(data) == f"ImageFolder({str(root)!r}, 9 images, 2 classes)"
    assert "blue: 4, red: 5" in data.report()


def test_grey_palette_and_alpha_images_become_rgb(tmp_path):
    for mode in ("L", "P", "RGBA", "I;16"):
        write_image(tmp_path / "x" / f"{mode.replace(';', '')}.png", COLOURS["green"], mode=mode)
    data = ImageFolder(tmp_path / "x")
    for i in range(len(data)):
        image = data.read_image(i)
        assert image.shape == (16, 20, 3) and image.dtype == np.uint8


def test_exif_rotation_is_applied(tmp_path):
    path = tmp_path / "x" / "phone.jpg"
    path.parent.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.new("RGB", (40, 20), (90, 90, 90)).save(path, exif=exif)
    assert ImageFolder(path.parent).read_image(0).shape == (40, 20, 3)


def test_large_jpegs_are_decoded_at_a_reduced_scale(tmp_path):
    write_image(tmp_path / "x" / "big.jpg", COLOURS["red"], size=(1600, 1200))
    image = ImageFolder(tmp_path / "x", image_size=64).read_image(0)
    assert image.shape == (150, 200, 3)  # 1/8 scale: still >= 2 * 64 on the short side
    full = ImageFolder(tmp_path / "x", image_size=800).read_image(0)
    assert full.shape == (1200, 1600, 3)


@pytest.mark.parametrize("backend", ["mxnet", "torch"])
def test_fit_and_predict_from_a_folder_match_arrays(tmp_path, backend):
    """A folder streams into either backend and gives what the same images as arrays give."""
    train = ImageFolder(write_folder(tmp_path / "train", per_class=5), scaled)
    test = ImageFolder(write_folder(tmp_path / "test", per_class=2), scaled)
    source, layer = (mxnet_cnn(), "relu1") if backend == "mxnet" else (torch_cnn(), "1")
    from_folder = xfer.LrRepurposer(source, [layer], extraction_batch_size=4).fit(train)
    assert from_folder.classes_.tolist() == ["blue", "red"]
    assert from_folder.predict(test).tolist() == test.labels.tolist()

    arrays = np.stack([train[i][0] for i in range(len(train))])
    from_arrays = xfer.LrRepurposer(source, [layer]).fit(arrays, train.labels)
    test_arrays = np.stack([test[i][0] for i in range(len(test))])
    np.testing.assert_allclose(
        from_folder.predict_proba(test), from_arrays.predict_proba(test_arrays), atol=1e-6
    )


def test_images_are_read_lazily_batch_by_batch(tmp_path):
    """Building reads no pixels; extraction decodes one batch before the model runs on it."""
    decoded = []

    def counting(images):
        decoded.append(len(images))
        return scaled(images)

    data = ImageFolder(write_folder(tmp_path / "photos", per_class=10), counting)
    assert decoded == []  # only headers were read
    model = torch_cnn()
    seen_at_forward = []
    model[0].register_forward_hook(lambda *_: seen_at_forward.append(len(decoded)))
    features, labels = ModelHandler(model).get_layer_output(data, ["1"], batch_size=4)
    assert features["1"].shape[0] == 20 and labels.tolist() == data.labels.tolist()
    # The first item is read once up front (to learn its shape), then 4 per batch.
    assert seen_at_forward == [5, 9, 13, 17, 21]


def test_a_dataloader_with_worker_processes_gives_the_same_features(tmp_path):
    data = ImageFolder(write_folder(tmp_path / "photos", per_class=3), scaled)
    handler = ModelHandler(torch_cnn())
    direct, labels = handler.get_layer_output(data, ["1"], batch_size=4)
    loader = torch.utils.data.DataLoader(data, batch_size=4, num_workers=2)
    through_loader, loader_labels = handler.get_layer_output(loader, ["1"])
    np.testing.assert_array_equal(direct["1"], through_loader["1"])
    assert loader_labels.tolist() == labels.tolist()


def test_a_folder_without_class_folders_has_no_labels(tmp_path):
    for i in range(3):
        write_image(tmp_path / "new" / f"{i}.png", COLOURS["red"], seed=i)
    data = ImageFolder(tmp_path / "new", scaled)
    assert data.labels is None and data.classes == []
    assert isinstance(data[0], np.ndarray)  # no (x, label) pair
    train = ImageFolder(write_folder(tmp_path / "train"), scaled)
    repurposer = xfer.LrRepurposer(torch_cnn(), ["1"]).fit(train)
    assert repurposer.predict(data).tolist() == ["red"] * 3
    assert "3 images (no labels)" in data.report()


def test_csv_of_paths_and_labels(tmp_path):
    write_folder(tmp_path / "all", per_class=2)
    table = tmp_path / "lists" / "train.csv"
    table.parent.mkdir()
    table.write_text(
        "path,label,notes\n../all/red/0.jpg,warm,x\n../all/blue/1.png,cold,\n"
        f"{tmp_path / 'all' / 'red' / '1.png'},warm,\n../all/red/0.jpg,warm,listed twice\n"
    )
    data = ImageFolder(table, image_size=8)
    assert data.labels.tolist() == ["warm", "cold", "warm"]
    assert data.paths[0] == str(tmp_path / "lists" / "../all/red/0.jpg")
    unlabelled = tmp_path / "lists" / "new.csv"
    unlabelled.write_text("file\n../all/blue/0.jpg\n")
    assert ImageFolder(unlabelled, path_column="file").labels is None


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("path,label\nmissing.jpg,red\n", r"train\.csv line 2: .*missing\.jpg does not exist"),
        ("path,label\nred/0.jpg,\n", r"train\.csv line 2: red/0\.jpg has an empty label"),
        ("path,label\nred/0.jpg,red\nred/0.jpg,blue\n",
         r"train\.csv line 3: red/0\.jpg is labelled 'blue' but 'red' on line 2"),
        ("path,label\n,red\n", r"train\.csv line 2: has no file name in column 'path'"),
        ("file,class\nred/0.jpg,red\n", r"has no column 'path' in its header row \(it has 'file', 'class'\)"),
    ],
)  # fmt: skip
def test_mislabelled_csv_rows_name_the_line_and_why(tmp_path, rows, message):
    write_folder(tmp_path, per_class=1)
    table = tmp_path / "train.csv"
    table.write_text(rows)
    with pytest.raises(DataFileError, match=message):
        ImageFolder(table)


def test_bad_image_files_raise_naming_the_file_or_are_skipped(tmp_path):
    root = write_folder(tmp_path / "photos", per_class=3)
    (root / "red" / "html.jpg").write_text("<html>not found</html>")
    (root / "red" / "empty.png").write_bytes(b"")
    good = write_image(tmp_path / "big.jpg", COLOURS["blue"], size=(200, 150)).read_bytes()
    (root / "blue" / "truncated.jpg").write_bytes(good[: len(good) // 2])  # the header is whole
    with pytest.raises(
        DataFileError, match=r"empty\.png: is not an image Pillow can read"
    ) as caught:
        ImageFolder(root)
    assert caught.value.path == str(root / "red" / "empty.png")
    assert "on_error='skip'" in str(caught.value)
    assert isinstance(caught.value, ValueError)

    # A truncated file has a valid header: found when it is decoded, named in the error.
    readable = ImageFolder(root / "blue")
    with pytest.raises(DataFileError, match=r"truncated\.jpg: is truncated or corrupt"):
        readable.read_image(readable.paths.index(str(root / "blue" / "truncated.jpg")))

    skipping = ImageFolder(root, on_error="skip")
    assert len(skipping) == 6
    assert sorted(Path(s.path).name for s in skipping.skipped) == [
        "empty.png",
        "html.jpg",
        "truncated.jpg",
    ]
    assert all(isinstance(s, SkippedFile) and s.reason for s in skipping.skipped)
    assert "3 skipped:" in skipping.report() and "truncated.jpg: is truncated" in skipping.report()


def test_skipping_logs_one_warning(tmp_path, caplog):
    root = write_folder(tmp_path / "photos", per_class=2)
    (root / "red" / "bad.png").write_text("x")
    with caplog.at_level("WARNING", logger="xfer.files"):
        ImageFolder(root, on_error="skip")
    assert [r.message for r in caplog.records] == [
        f"Skipped 1 unreadable or mislabelled image files: {root / 'red' / 'bad.png'} "
        "(is not an image Pillow can read (unknown format, or not an image))."
    ]


def test_folder_problems(tmp_path):
    with pytest.raises(
        DataFileNotFoundError, match=r"nowhere does not exist: give a folder of images"
    ):
        ImageFolder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFileError, match=r"No image files in .*empty: put them in it"):
        ImageFolder(tmp_path / "empty")
    root = write_folder(tmp_path / "photos", per_class=1)
    write_image(root / "stray.jpg", COLOURS["red"])
    with pytest.raises(
        DataFileError, match=r"stray\.jpg: is directly in the data folder, which also has class"
    ):
        ImageFolder(root)
    assert len(ImageFolder(root, on_error="skip")) == 2
    with pytest.raises(InvalidArgumentError, match="on_error must be 'raise' or 'skip'"):
        ImageFolder(root, on_error="ignore")
    with pytest.raises(InvalidArgumentError, match="image_size must be a positive int"):
        ImageFolder(root, image_size=0)


def test_preprocess_must_return_one_row_per_image(tmp_path):
    data = ImageFolder(write_folder(tmp_path / "p", per_class=1), lambda images: images[0])
    with pytest.raises(InvalidArgumentError, match="preprocess must return one row per image"):
        data[0]


def test_zoo_preprocessing_of_a_folder_equals_preprocessing_the_arrays(tmp_path):
    pytest.importorskip("skimage")
    from xfer.zoo import efficientnet_lite0_preprocess

    prepare = partial(efficientnet_lite0_preprocess, image_size=32)
    data = ImageFolder(write_folder(tmp_path / "p", per_class=1), prepare, image_size=32)
    np.testing.assert_array_equal(data[0][0], prepare([data.read_image(0)])[0])


def test_split_is_stratified_seeded_and_disjoint(tmp_path):
    data = ImageFolder(write_folder(tmp_path / "p", per_class=5, classes=("red", "blue", "green")))
    train, test = data.split(0.4, random_state=3)
    assert sorted(test.labels.tolist()) == ["blue"] * 2 + ["green"] * 2 + ["red"] * 2
    assert not set(train.paths) & set(test.paths) and len(train) + len(test) == 15
    assert data.split(0.4, random_state=3)[1].paths == test.paths
    with pytest.raises(InvalidArgumentError, match="test_fraction must be a float in"):
        data.split(1.5)


# ----------------------------------------------------------------------------- texts


def test_texts_from_csv_tsv_jsonl_and_folders(tmp_path):
    (tmp_path / "a.csv").write_text('text,label\n"good, really",pos\nbad,neg\n')
    (tmp_path / "a.tsv").write_text("label\ttext\npos\tgood, really\nneg\tbad\n")
    (tmp_path / "a.jsonl").write_text(
        json.dumps({"text": "good, really", "label": "pos"})
        + "\n\n"
        + json.dumps({"text": "bad", "label": "neg"})
    )
    for name in ("a.csv", "a.tsv", "a.jsonl"):
        data = read_texts(tmp_path / name)
        assert data.texts == ["good, really", "bad"] and data.labels.tolist() == ["pos", "neg"]
    assert read_texts(tmp_path / "a.csv").sources == [
        f"{tmp_path / 'a.csv'} line 2",
        f"{tmp_path / 'a.csv'} line 3",
    ]
    (tmp_path / "ids.jsonl").write_text('{"body": "x", "stars": 5}\n{"body": "y", "stars": 1}\n')
    numeric = read_texts(tmp_path / "ids.jsonl", text_column="body", label_column="stars")
    assert numeric.labels.tolist() == [5, 1] and numeric.classes == [1, 5]

    for label, text in [("pos", "lovely"), ("pos", "great"), ("neg", "awful")]:
        folder = tmp_path / "docs" / label
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{text}.txt").write_text(text)
    data = read_texts(tmp_path / "docs")
    assert data.texts == ["awful", "great", "lovely"] and data.labels.tolist() == [
        "neg",
        "pos",
        "pos",
    ]
    flat = read_texts(tmp_path / "docs" / "pos")
    assert flat.labels is None and len(flat) == 2


def test_text_problems_name_the_file_and_why(tmp_path):
    (tmp_path / "rows.csv").write_text("text,label\nfine,a\n   ,b\nno label,\n")
    with pytest.raises(DataFileError, match=r"rows\.csv line 3: has an empty text"):
        read_texts(tmp_path / "rows.csv")
    data = read_texts(tmp_path / "rows.csv", on_error="skip")
    assert data.texts == ["fine"] and [s.reason for s in data.skipped] == [
        "has an empty text",
        "has no label",
    ]

    (tmp_path / "lines.jsonl").write_text(
        '{"text": "a", "label": 1}\n{"text": "b", "label": 2\n[1]\n'
    )
    with pytest.raises(DataFileError, match=r"lines\.jsonl line 2: is not valid JSON"):
        read_texts(tmp_path / "lines.jsonl")
    assert [s.reason for s in read_texts(tmp_path / "lines.jsonl", on_error="skip").skipped] == [
        "is not valid JSON (Expecting ',' delimiter)", "is a JSON list, not an object"]  # fmt: skip

    folder = tmp_path / "docs" / "pos"
    folder.mkdir(parents=True)
    (folder / "ok.txt").write_text("ok")
    (folder / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataFileError, match=r"latin1\.txt: is not UTF-8 text \(byte 3\)"):
        read_texts(tmp_path / "docs")
    with pytest.raises(DataFileError, match=r"unknown text file format '\.xlsx'"):
        (tmp_path / "a.xlsx").write_text("x")
        read_texts(tmp_path / "a.xlsx")
    with pytest.raises(
        DataFileError, match=r"has no column 'text' in its header row \(it has 'body'\)"
    ):
        (tmp_path / "body.csv").write_text("body\nx\n")
        read_texts(tmp_path / "body.csv")
    with pytest.raises(DataFileNotFoundError, match="does not exist"):
        read_texts(tmp_path / "missing.csv")
    (tmp_path / "mixed.jsonl").write_text(
        '{"text": "a", "label": 1}\n{"text": "b", "label": "two"}\n'
    )
    with pytest.raises(DataFileError, match=r"The labels mix types \(int, str\)"):
        read_texts(tmp_path / "mixed.jsonl")
