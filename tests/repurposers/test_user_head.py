"""A user-written head (k nearest neighbours) gets the whole battery and loads back via the registry."""

from __future__ import annotations

import numpy as np

from xfer import MetaModelRepurposer
from xfer._mxnet import mx
from xfer.serialization import register_repurposer
from xfer.testing import RepurposerTestCase


@register_repurposer(key="tests.KnnHead")
class KnnHead(MetaModelRepurposer):
    """Probabilities = class frequencies among the k nearest training examples."""

    def __init__(
        self,
        source_model,
        feature_layer_names,
        context_function=mx.cpu,
        num_devices=1,
        n_neighbors=5,
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

    def _train_model_from_features(self, features, labels, feature_indices_per_layer):
        return {"features": np.asarray(features, dtype=np.float64), "labels": labels}

    def _predict_probability_from_features(self, features):
        train = self.target_model_
        distances = (
            (np.asarray(features, np.float64)[:, None, :] - train["features"][None]) ** 2
        ).sum(-1)
        nearest = np.argsort(distances, axis=1, kind="stable")[:, : self.n_neighbors]
        votes = train["labels"][nearest]
        counts = np.stack([(votes == k).sum(1) for k in range(len(self.classes_))], axis=1)
        return counts / counts.sum(1, keepdims=True)

    def _get_target_model_state(self):
        return {"kind": "knn"}, dict(self.target_model_)

    def _set_target_model_state(self, config, arrays):
        self.target_model_ = {"features": arrays["features"], "labels": arrays["labels"]}


class TestUserKnnHead(RepurposerTestCase):
    def create_repurposer(self, source_model=None, feature_layer_names=None, **kwargs):
        return KnnHead(source_model, feature_layer_names, n_neighbors=3, **kwargs)


def test_user_head_manifest_names_its_key(tmp_path):
    import json

    X, y = TestUserKnnHead().data()
    KnnHead(None, None).fit(X, y).save(tmp_path / "knn")
    assert json.loads((tmp_path / "knn.json").read_text())["class_key"] == "tests.KnnHead"
