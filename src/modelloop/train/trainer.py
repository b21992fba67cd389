"""The training loop.

Data stays in memory as tensors; batches are index slices and augmentation is one vectorized
op per batch (no per-sample Python). Early stopping keeps the best epoch by validation accuracy
(ties broken by validation loss). With a checkpoint path, state is written after every epoch so
an interrupted run continues where it stopped.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.transforms import random_shift

__all__ = ["TrainConfig", "TrainResult", "Trainer"]

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    max_epochs: int = 40
    patience: int = 6
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    shift: int = 0
    seed: int = 0
    time_limit_s: float | None = None
    checkpoint_path: str | Path | None = None


@dataclass
class TrainResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_val_accuracy: float
    history: list[dict[str, float]] = field(default_factory=list)
    stopped: str = "max_epochs"  # max_epochs | early_stopping | time_limit
    seconds: float = 0.0


class Trainer:
    """Fits one model. ``__init__`` stores the config; ``fit`` does the work."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    def _evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        model.eval()
        with torch.inference_mode():
            losses, correct = 0.0, 0
            for i in range(0, len(x), 1024):
                logits = model(x[i : i + 1024])
                losses += F.cross_entropy(logits, y[i : i + 1024], reduction="sum").item()
                correct += (logits.argmax(1) == y[i : i + 1024]).sum().item()
        n = max(len(x), 1)
        return losses / n, correct / n

    def fit(
        self,
        model: nn.Module,
        train: tuple[torch.Tensor, torch.Tensor],
        val: tuple[torch.Tensor, torch.Tensor],
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
        resume: bool = False,
    ) -> TrainResult:
        """Train ``model`` in place and return the best epoch's weights.

        Args:
            train, val: (x float32 (N, C, H, W) already normalized, y int64 (N,)).
            on_epoch: called after each epoch with (epoch, metrics); may raise to stop (e.g. pruning).
            resume: continue from ``config.checkpoint_path`` if it exists.
        """
        cfg = self.config
        x, y = train
        xv, yv = val
        gen = torch.Generator().manual_seed(cfg.seed)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.max_epochs)
        ckpt = Path(cfg.checkpoint_path) if cfg.checkpoint_path else None

        start_epoch, history = 0, []
        best = {"acc": -1.0, "loss": float("inf"), "epoch": -1, "state": copy.deepcopy(model.state_dict())}
        bad_epochs, elapsed_before = 0, 0.0
        if resume and ckpt is not None and ckpt.is_file():
            # weights_only: a checkpoint can never run code when loaded.
            state = torch.load(ckpt, weights_only=True)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            gen.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            start_epoch, history = int(state["epoch"]) + 1, list(state["history"])
            best = {"acc": float(state["best_acc"]), "loss": float(state["best_loss"]),
                    "epoch": int(state["best_epoch"]), "state": state["best_state"]}
            bad_epochs, elapsed_before = int(state["bad_epochs"]), float(state["seconds"])
            log.info("resumed training at epoch %d from %s", start_epoch + 1, ckpt)

        t0 = time.perf_counter() - elapsed_before
        stopped = "max_epochs"
        n = len(x)
        for epoch in range(start_epoch, cfg.max_epochs):
            model.train()
            perm = torch.randperm(n, generator=gen)
            total, seen = 0.0, 0
            for i in range(0, n, cfg.batch_size):
                idx = perm[i : i + cfg.batch_size]
                if len(idx) < 2 and n >= 2:
                    continue  # BatchNorm cannot train on a batch of one
                xb = random_shift(x[idx], cfg.shift, gen)
                loss = F.cross_entropy(model(xb), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
                seen += len(idx)
            sched.step()
            val_loss, val_acc = self._evaluate(model, xv, yv)
            row = {"epoch": epoch + 1, "train_loss": total / max(seen, 1), "val_loss": val_loss,
                   "val_accuracy": val_acc, "lr": opt.param_groups[0]["lr"]}
            history.append(row)
            if val_acc > best["acc"] or (val_acc == best["acc"] and val_loss < best["loss"]):
                best = {"acc": val_acc, "loss": val_loss, "epoch": epoch + 1,
                        "state": copy.deepcopy(model.state_dict())}
                bad_epochs = 0
            else:
                bad_epochs += 1
            seconds = time.perf_counter() - t0
            log.debug("epoch %d: %s", epoch + 1, row)
            if ckpt is not None:
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                tmp = ckpt.with_suffix(".tmp")
                torch.save({
                    "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "epoch": epoch,
                    "history": history, "best_acc": best["acc"], "best_loss": best["loss"],
                    "best_epoch": best["epoch"], "best_state": best["state"], "bad_epochs": bad_epochs,
                    "seconds": seconds,
                }, tmp)
                tmp.replace(ckpt)
            if on_epoch is not None:
                on_epoch(epoch, row)
            if bad_epochs >= cfg.patience:
                stopped = "early_stopping"
                break
            if cfg.time_limit_s is not None and seconds >= cfg.time_limit_s:
                stopped = "time_limit"
                break
        model.load_state_dict(best["state"])
        return TrainResult(best["state"], best["epoch"], best["acc"], history, stopped,
                           time.perf_counter() - t0)


def describe(result: TrainResult) -> dict[str, Any]:
    return {"best_epoch": result.best_epoch, "best_val_accuracy": result.best_val_accuracy,
            "epochs_run": len(result.history), "stopped": result.stopped, "seconds": round(result.seconds, 2)}
