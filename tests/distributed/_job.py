"""One process of the localhost jobs in test_jobs.py: ``python _job.py mxnet|torch OUTPUT_DIR``.

Started by ``xfer.distributed.launch`` (MXNet, 2 workers and 1 server) or ``torchrun`` (torch, 2
Gloo processes). Each process writes ``OUTPUT_DIR/report-<rank>.json`` and the parameters of its
fits; the test compares them across processes and with one process.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch.utils.data

from xfer.distributed import current_world
from xfer.feature_store import extract_features
from xfer.model_handler import ModelHandler
from xfer.repurposers import NeuralNetworkFineTuneRepurposer

OPTIONS = dict(
    batch_size=16, num_epochs=3, head_epochs=1, optimizer="adam",
    optimizer_params={"learning_rate": 0.01}, validation_fraction=0.2, early_stopping_patience=3,
    random_state=0, kvstore="dist_sync",
)  # fmt: skip


class Interrupted(Exception):
    pass


class InterruptedFineTune(NeuralNetworkFineTuneRepurposer):
    def _epoch_end_hook(self, epoch):
        if epoch == 2:  # after the checkpoint of epoch 2, in every process
            raise Interrupted()


class RecordingDataset(torch.utils.data.Dataset):
    """The images with their labels, noting which ones are read."""

    def __init__(self, images, labels):
        self.images, self.labels, self.read = images, labels, set()

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        self.read.add(int(index))
        return self.images[index], self.labels[index]


def parameters(repurposer) -> dict[str, np.ndarray]:
    handler = repurposer.target_handler_
    values = {**handler.arg_params, **handler.aux_params}
    return {k: v.asnumpy() if hasattr(v, "asnumpy") else v.detach().cpu().numpy() for k, v in values.items()}


def main(backend: str, output: Path) -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stdout)
    if backend == "torch":
        import torch.distributed as dist

        dist.init_process_group("gloo")
        from xfer.toy_models import torch_digits_cnn

        source = ModelHandler.load_checkpoint(str(output / "source"), model=torch_digits_cnn())
    else:
        source = ModelHandler.load_checkpoint(str(output / "source"))
    world = current_world()
    rank = world.rank
    report: dict = {"rank": rank, "size": world.size, "backend": world.backend}
    report["sum"] = world.sum([rank + 1.0, 10.0]).tolist()
    report["gathered"] = [b.decode() for b in world.gather_bytes(f"rank {rank}".encode())]

    images = np.load(output / "images.npy", mmap_mode="r")
    labels = np.load(output / "labels.npy")
    store = extract_features(source, images, ["fc1"], output / "store", shard_size=100)
    report["store_rows"] = len(store)

    dataset = RecordingDataset(images, labels)
    whole = NeuralNetworkFineTuneRepurposer(source, "relu3", None, checkpoint_dir=str(output / "a"), **OPTIONS)
    whole.fit(dataset)
    report["read"] = sorted(dataset.read)
    report["history"] = {"loss": whole.history_.loss, "val_loss": whole.history_.val_loss}
    report["n_training_examples"] = whole.n_training_examples_
    np.savez(output / f"a-{rank}.npz", **parameters(whole))
    if world.is_main:
        whole.save(str(output / "model"))

    interrupted = InterruptedFineTune(source, "relu3", None, checkpoint_dir=str(output / "b"), **OPTIONS)
    try:
        interrupted.fit(images, labels)
    except Interrupted:
        report["interrupted"] = True
    resumed = NeuralNetworkFineTuneRepurposer(source, "relu3", None, checkpoint_dir=str(output / "b"), **OPTIONS)
    resumed.fit(images, labels, resume=True)
    report["resumed_history"] = {"loss": resumed.history_.loss}
    np.savez(output / f"b-{rank}.npz", **parameters(resumed))

    world.barrier()
    (output / f"report-{rank}.json").write_text(json.dumps(report))
    if backend == "torch":
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
