"""The Trainer's data-parallel mode on real processes (gloo on 127.0.0.1): two processes that
share every batch train the same weights as one process alone, and only the first writes the
checkpoint."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from modelloop.models import build_model
from modelloop.train import TrainConfig, Trainer

CONFIGS = {
    "mlp": {"family": "mlp", "input_shape": [20], "num_classes": 3, "params": {"hidden": 32, "dropout": 0.0}},
    # BatchNorm layers: their batch statistics must span every process's share of the batch
    "cnn": {"family": "cnn", "input_shape": [1, 8, 8], "num_classes": 3, "params": {"width": 8, "dropout": 0.0}},
}


def _data(family: str):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, *CONFIGS[family]["input_shape"], generator=g)
    flat = x.reshape(len(x), -1)
    y = (flat[:, :3].argmax(1)).long()
    return (x[:192], y[:192]), (x[192:], y[192:])


def _fit(rank: int, world: int, port: int, out: str, family: str) -> None:
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = build_model(CONFIGS[family])
    train, val = _data(family)
    ckpt = f"{out}/ckpt-{world}-{rank}.pt"
    cfg = TrainConfig(max_epochs=4, patience=10, batch_size=32, lr=3e-3, threads=1, precision="fp32",
                      checkpoint_path=ckpt)
    res = Trainer(cfg).fit(model, train, val)
    torch.save({"state": res.best_state, "history": res.history, "workers": res.workers},
               f"{out}/result-{world}-{rank}.pt")
    if world > 1:
        dist.barrier()  # before destroying the group: without it gloo may abort at exit
        dist.destroy_process_group()


@pytest.mark.parametrize("family", ["mlp", "cnn"])
def test_two_processes_sharing_each_batch_train_what_one_process_trains(tmp_path, family):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _fit(0, 1, port, str(tmp_path), family)
    mp.start_processes(_fit, args=(2, port, str(tmp_path), family), nprocs=2, start_method="spawn")
    one = torch.load(tmp_path / "result-1-0.pt", weights_only=True)
    first, second = (torch.load(tmp_path / f"result-2-{r}.pt", weights_only=True) for r in (0, 1))
    assert one["workers"] == 1 and first["workers"] == second["workers"] == 2
    for k, v in one["state"].items():
        # gradients averaged over two half batches = the whole batch's gradient (up to float sums)
        assert torch.allclose(first["state"][k].float(), v.float(), atol=1e-4), k
        assert torch.equal(first["state"][k], second["state"][k]), k  # every process holds the same weights
    for a, b in zip(one["history"], first["history"], strict=True):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-4  # the mean over both processes' examples
        assert a["val_accuracy"] == b["val_accuracy"]
    assert (tmp_path / "ckpt-2-0.pt").is_file() and not (tmp_path / "ckpt-2-1.pt").exists()
