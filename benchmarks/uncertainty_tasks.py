"""Real few-shot tasks for the calibration and OOD sections: features extracted with ``xfer.zoo``.

Each task is a pretrained source model (``xfer.zoo``) and a real dataset (``xfer.datasets``): a
*pool* of labelled examples from the training split, a test set, and for the image tasks inputs
from outside the task (out-of-distribution, OOD). Features are extracted once per task and run
(set ``XFER_BENCHMARK_CACHE=DIR`` to keep them on disk between runs); the heads are then trained on
several random draws of ``labels_per_class`` examples per class from the pool.

=========================  ======================================  =====  ===========================
task                       source -> target                        K      OOD inputs
=========================  ======================================  =====  ===========================
``fashion``                EfficientNet-Lite0 -> Fashion-MNIST     10     scikit-learn digits
``faces``                  EfficientNet-Lite0 -> faces/non-faces   2      20 photos, 30 noise images
``20ng``                   MiniLM -> 20 Newsgroups                 20     -
``r8``                     MiniLM -> Reuters R8                    8      -
``20ng-pair``              MiniLM -> 2 newsgroups (ibm.pc vs mac)  2      -
``digits`` (extra)         none: 8 x 8 pixels -> digits            10     -
``20ng-3`` (extra)         MiniLM -> 20 Newsgroups, 3 per class    20     -
=========================  ======================================  =====  ===========================

The first five are the acceptance tasks of the uncertainty issue; the two *extra* tasks are not
named there (a check that the defaults were not fitted to those five): raw pixels (64 features,
no pretrained model) and 20 Newsgroups with 3 labels per class (the ``20ng`` features).

EfficientNet-Lite0 runs on the torch backend at 96 px (``stretch`` preprocessing; images are grey
and small), features of ``_avg_pooling`` (1,280); MiniLM features are its sentence vectors (384,
256 tokens per text). The faces task has no separate test split: the 200 images are the pool and
each draw is tested on the images it did not train on.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IMAGE_SIZE = 96
IMAGE_LAYER = "_avg_pooling"
TEXT_LAYER = "output"
PAIR = ("comp.sys.ibm.pc.hardware", "comp.sys.mac.hardware")
#: The other photos shown to the faces model (``skimage.data`` names, then scikit-learn's two).
PHOTOS = (
    "brick", "camera", "chelsea", "cell", "clock", "coffee", "coins", "colorwheel", "grass",
    "gravel", "hubble_deep_field", "immunohistochemistry", "microaneurysms", "moon", "page",
    "retina", "rocket", "text",
)  # fmt: skip


@dataclass(frozen=True)
class Task:
    """A task's description and sizes (per class: pool drawn from, test kept)."""

    title: str
    labels_per_class: int
    pool_per_class: int
    test_per_class: int | None
    ood: tuple[str, ...] = ()
    #: Reuse the features of this task (same pool and test sizes) instead of extracting.
    features_of: str | None = None
    extra: bool = False


TASKS: dict[str, Task] = {
    "fashion": Task("EfficientNet-Lite0 -> Fashion-MNIST", 10, 120, 100, ("digits",)),
    "faces": Task("EfficientNet-Lite0 -> faces vs non-faces", 10, 100, None, ("photos", "noise")),
    "20ng": Task("MiniLM -> 20 Newsgroups", 8, 30, 30),
    "r8": Task("MiniLM -> Reuters R8", 5, 25, 50),
    "20ng-pair": Task("MiniLM -> ibm.pc vs mac hardware (20NG)", 8, 40, 150),
    "digits": Task("8 x 8 pixels -> digits (extra)", 5, 60, 100, extra=True),
    "20ng-3": Task("MiniLM -> 20 Newsgroups (extra)", 3, 30, 30, features_of="20ng", extra=True),
}


@dataclass
class TaskData:
    """Extracted features of one task: the labelled pool, the test set and the OOD sets."""

    pool_x: np.ndarray
    pool_y: np.ndarray
    test_x: np.ndarray | None
    test_y: np.ndarray | None
    class_names: list[str]
    ood: dict[str, np.ndarray] = field(default_factory=dict)

    def draw(self, labels_per_class: int, seed: int) -> tuple[np.ndarray, ...]:
        """``(x_train, y_train, x_test, y_test)`` of draw ``seed`` (stratified, without replacement)."""
        rng = np.random.RandomState(seed)
        chosen = np.sort(np.concatenate([
            rng.choice(np.flatnonzero(self.pool_y == k), labels_per_class, replace=False)
            for k in np.unique(self.pool_y)
        ]))  # fmt: skip
        if self.test_x is None:
            rest = np.setdiff1d(np.arange(len(self.pool_y)), chosen)
            return self.pool_x[chosen], self.pool_y[chosen], self.pool_x[rest], self.pool_y[rest]
        return self.pool_x[chosen], self.pool_y[chosen], self.test_x, self.test_y


# ------------------------------------------------------------------------------ raw inputs


def _photos(size: int) -> np.ndarray:
    """The other photos, grey, centre-cropped square and resized to ``size`` (faces' format)."""
    import skimage.color
    import skimage.data
    import skimage.transform
    from sklearn.datasets import load_sample_images

    images = [getattr(skimage.data, name)() for name in PHOTOS] + list(load_sample_images().images)
    out = []
    for image in images:
        image = np.asarray(image)
        if image.ndim == 3:
            image = skimage.color.rgb2gray(image[:, :, :3])
        image = image.astype(np.float64) / (255.0 if image.max() > 1 else 1.0)
        side = min(image.shape)
        top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
        square = image[top : top + side, left : left + side]
        small = skimage.transform.resize(square, (size, size), anti_aliasing=True)
        out.append(np.clip(np.round(small * 255), 0, 255).astype(np.uint8))
    return np.stack(out)


def _noise(size: int, count: int = 30, seed: int = 0) -> np.ndarray:
    """Noise images: a third uniform, a third Gaussian, a third smoothed (blobs)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.RandomState(seed)
    third = count // 3
    uniform = rng.uniform(0, 255, (third, size, size))
    gaussian = rng.normal(128, 50, (third, size, size))
    smooth = np.stack([
        gaussian_filter(rng.normal(0, 1, (size, size)), 2.0) for _ in range(count - 2 * third)
    ])  # fmt: skip
    smooth = 128 + 127 * smooth / np.abs(smooth).max(axis=(1, 2), keepdims=True)
    return np.clip(np.round(np.concatenate([uniform, gaussian, smooth])), 0, 255).astype(np.uint8)


def _image_features(batches: list[np.ndarray]) -> list[np.ndarray]:
    from xfer.model_handler import ModelHandler
    from xfer.zoo import efficientnet_lite0, efficientnet_lite0_preprocess

    handler = ModelHandler(efficientnet_lite0("torch", image_size=IMAGE_SIZE))
    out = []
    for images in batches:
        x = efficientnet_lite0_preprocess(images, IMAGE_SIZE, mode="stretch")
        out.append(handler.get_layer_output(x, [IMAGE_LAYER], batch_size=64)[0][IMAGE_LAYER])
    return out


def _text_features(batches: list[list[str]]) -> list[np.ndarray]:
    from xfer.model_handler import ModelHandler
    from xfer.zoo import minilm

    handler = ModelHandler(minilm())
    return [handler.get_layer_output(texts, [TEXT_LAYER], batch_size=32)[0][TEXT_LAYER] for texts in batches]


def _extract(name: str, task: Task) -> TaskData:
    from xfer.datasets import load_digits, load_faces, load_fashion_mnist, load_text_corpus

    if name == "fashion":
        pool = load_fashion_mnist("train", n_per_class=task.pool_per_class, random_state=0)
        test = load_fashion_mnist("test", n_per_class=task.test_per_class, random_state=0)
        digits = load_digits(n_per_class=task.test_per_class // 2, random_state=0)
        pool_x, test_x, digits_x = _image_features([pool.data, test.data, digits.data])
        return TaskData(pool_x, pool.target, test_x, test.target, pool.class_names, {"digits": digits_x})
    if name == "digits":  # raw pixels: the first pool_per_class of each class, the rest for testing
        digits = load_digits()
        x = digits.data.reshape(len(digits.data), -1).astype(np.float64)
        rank = np.zeros(len(x), dtype=np.int64)
        for k in range(10):
            rank[digits.target == k] = np.arange(np.sum(digits.target == k))
        pool = rank < task.pool_per_class
        test = (rank >= task.pool_per_class) & (rank < task.pool_per_class + task.test_per_class)
        return TaskData(x[pool], digits.target[pool], x[test], digits.target[test], digits.class_names)
    if name == "faces":
        faces = load_faces()
        size = faces.data.shape[1]
        pool_x, photos_x, noise_x = _image_features([faces.data, _photos(size), _noise(size)])
        ood = {"photos": photos_x, "noise": noise_x}
        return TaskData(pool_x, faces.target, None, None, faces.class_names, ood)
    corpus = "reuters-r8" if name == "r8" else "20newsgroups"
    pool = load_text_corpus(corpus, "train")
    test = load_text_corpus(corpus, "test")
    if name == "20ng-pair":
        keep = [pool.class_names.index(c) for c in PAIR]
        pool = pool.subset(np.flatnonzero(np.isin(pool.target, keep)))
        test = test.subset(np.flatnonzero(np.isin(test.target, keep)))
        for dataset in (pool, test):
            dataset.target = np.array([keep.index(t) for t in dataset.target], dtype=np.int64)
            dataset.class_names = list(PAIR)
    pool = _per_class(pool, task.pool_per_class, seed=0)
    test = _per_class(test, task.test_per_class, seed=0)
    pool_x, test_x = _text_features([pool.data, test.data])
    return TaskData(pool_x, pool.target, test_x, test.target, pool.class_names)


def _per_class(dataset, n_per_class: int, seed: int):
    """At most ``n_per_class`` random examples of each class (all of a smaller class)."""
    rng = np.random.RandomState(seed)
    chosen = []
    for k in np.unique(dataset.target):
        members = np.flatnonzero(dataset.target == k)
        chosen.append(rng.choice(members, min(n_per_class, len(members)), replace=False))
    return dataset.subset(np.sort(np.concatenate(chosen)))


_MEMORY: dict[str, TaskData] = {}


def task_data(name: str, task: Task | None = None) -> TaskData:
    """Features of task ``name`` (extracted once per process; on disk under ``$XFER_BENCHMARK_CACHE``)."""
    task = task or TASKS[name]
    name = task.features_of or name
    key = hashlib.sha1(json.dumps([name, task.pool_per_class, task.test_per_class]).encode()).hexdigest()[:10]
    if key in _MEMORY:
        return _MEMORY[key]
    cache = os.environ.get("XFER_BENCHMARK_CACHE")
    path = Path(cache) / f"{name}-{key}.npz" if cache else None
    if path is not None and path.is_file():
        with np.load(path, allow_pickle=False) as arrays:
            data = TaskData(
                arrays["pool_x"], arrays["pool_y"],
                arrays["test_x"] if "test_x" in arrays else None,
                arrays["test_y"] if "test_y" in arrays else None,
                [str(c) for c in arrays["class_names"]],
                {k[4:]: arrays[k] for k in arrays.files if k.startswith("ood.")},
            )  # fmt: skip
    else:
        data = _extract(name, task)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            arrays = {"pool_x": data.pool_x, "pool_y": data.pool_y, "class_names": np.array(data.class_names)}
            if data.test_x is not None:
                arrays.update(test_x=data.test_x, test_y=data.test_y)
            arrays.update({f"ood.{k}": v for k, v in data.ood.items()})
            temporary = path.with_suffix(".tmp.npz")
            np.savez(temporary, **arrays)
            temporary.replace(path)
    _MEMORY[key] = data
    return data
