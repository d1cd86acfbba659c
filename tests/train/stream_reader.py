"""Run by test_torchrun.py under torchrun (not a test module): the ids of the samples each process's training
loader yields in epochs 0 and 1 of a WebDataset stream, gathered on rank 0 and written as JSON to argv[2]."""
import json
import sys

import torch
import torch.distributed as dist

from edgevit.train.datasets import build_train_data
from edgevit.train.distributed import cleanup_distributed, init_distributed
from edgevit.train.loaders import stream_loader


def sample_id(img):  # the writer put each sample's id in the red channel of its pixels
    return torch.tensor(img.getpixel((0, 0))[0])


def main(root: str, out: str, workers: int, batch: int) -> None:
    info = init_distributed("cpu")
    cfg = {"data": root, "dataset": "wds/ids", "train_split": None, "val_split": None, "num_classes": None,
           "workers": workers, "batch_size": batch, "seed": 0}
    data = build_train_data(cfg, sample_id, sample_id, info.rank, info.world_size)
    seen = {}
    for epoch in (0, 1):
        ds = data.make_train()
        ds.set_epoch(epoch)
        ids = [int(i) for images, _ in stream_loader(ds, batch, workers, info.device, 0, epoch, info.rank)
               for i in images]
        gathered = [None] * info.world_size
        dist.all_gather_object(gathered, ids)
        seen[epoch] = gathered
    if info.is_main:
        with open(out, "w") as f:
            json.dump(seen, f)
    cleanup_distributed()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
