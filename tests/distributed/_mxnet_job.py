"""A worker of the localhost MXNet job in test_mxnet_job.py (started by xfer.distributed.launch).

Usage: python _mxnet_job.py OUTPUT_DIR. Writes OUTPUT_DIR/worker-<rank>.json with what it saw.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np

from xfer.distributed import current_world
from xfer.feature_store import extract_features
from xfer.model_handler import ModelHandler


def main(output: Path) -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stdout)
    world = current_world()
    report: dict = {"rank": world.rank, "size": world.size, "backend": world.backend}
    report["sum"] = world.sum([world.rank + 1.0, 10.0]).tolist()
    report["gathered"] = [b.decode() for b in world.gather_bytes(f"rank {world.rank}".encode())]

    images = np.load(output / "images.npy", mmap_mode="r")
    source = ModelHandler.load_checkpoint(str(output / "source"))
    store = extract_features(source, images, ["fc1"], output / "store", shard_size=100)
    report["store_rows"] = len(store)
    world.barrier()
    (output / f"worker-{world.rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
