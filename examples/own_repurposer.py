"""Write your own repurposer: a k-nearest-neighbours head, registered, saved and loaded.

The script version of ``docs/tutorials/06_own_repurposer.ipynb``, on Xfer's toy task (a CNN
trained on digits 0-4, repurposed for digits 5-9 with 10 labels per digit).

Run: ``python examples/own_repurposer.py`` (a few seconds).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

import xfer
from xfer import MetaModelRepurposer
from xfer._mxnet import mx
from xfer.serialization import register_repurposer
from xfer.toy_models import load_digit_images, train_digits_cnn


@register_repurposer(key="examples.KnnRepurposer")
class KnnRepurposer(MetaModelRepurposer):
    """k nearest neighbours (cosine similarity) on features of the source model.

    Parameters
    ----------
    n_neighbors : int, default=5
        Neighbours that vote.
    pseudo_count : float, default=0.5
        Added to every class's votes, so no class gets probability 0.
    """

    def __init__(
        self,
        source_model,
        feature_layer_names,
        context_function=mx.cpu,
        num_devices=1,
        n_neighbors=5,
        pseudo_count=0.5,
        *,
        extraction_batch_size=None,
        verbose=False,
    ):
        super().__init__(
            source_model,
            feature_layer_names,
            context_function,
            num_devices,
            extraction_batch_size=extraction_batch_size,
            verbose=verbose,
        )
        self.n_neighbors = n_neighbors
        self.pseudo_count = pseudo_count

    @staticmethod
    def _normalise(features):
        features = np.asarray(features, dtype=np.float64)
        return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)

    def _train_model_from_features(self, features, labels, feature_indices_per_layer):
        # labels are int codes 0..K-1; the base class keeps the user's labels in classes_.
        if self.n_neighbors < 1:
            raise ValueError(f"n_neighbors must be at least 1, got {self.n_neighbors}.")
        return {"features": self._normalise(features), "labels": np.asarray(labels, np.int64)}

    def _predict_probability_from_features(self, features):
        train = self.target_model_
        similarity = self._normalise(features) @ train["features"].T
        k = min(self.n_neighbors, len(train["labels"]))
        nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
        votes = train["labels"][nearest]
        counts = np.stack([(votes == c).sum(1) for c in range(len(self.classes_))], axis=1)
        counts = counts + self.pseudo_count
        return counts / counts.sum(1, keepdims=True)

    def _get_target_model_state(self):
        return {"kind": "knn"}, dict(self.target_model_)

    def _set_target_model_state(self, config, arrays):
        self.target_model_ = {"features": arrays["features"], "labels": arrays["labels"]}


def main() -> None:
    source = train_digits_cnn(classes=(0, 1, 2, 3, 4), num_epochs=5, seed=0)
    images, labels = load_digit_images(classes=range(5, 10))
    rng = np.random.RandomState(0)
    train = np.concatenate(
        [rng.choice(np.flatnonzero(labels == d), 10, replace=False) for d in range(5, 10)]
    )
    test = np.setdiff1d(np.arange(len(labels)), train)

    knn = KnnRepurposer(source, ["pool1"], n_neighbors=5).fit(images[train], labels[train])
    print(
        f"kNN accuracy on digits 5-9 from 10 labels each: {knn.score(images[test], labels[test]):.3f}"
    )
    with tempfile.TemporaryDirectory() as folder:
        knn.save(Path(folder) / "digits_knn")
        loaded = xfer.load(Path(folder) / "digits_knn")
        same = np.array_equal(loaded.predict_proba(images[test]), knn.predict_proba(images[test]))
    print(
        f"saved and loaded through the registry key {KnnRepurposer.serialization_key!r}: same predictions {same}"
    )


if __name__ == "__main__":
    main()
