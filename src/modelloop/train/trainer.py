"""The training loop.

Data stays in memory as tensors; batches are index slices and augmentation is one vectorized
op per batch (no per-sample Python). Early stopping keeps the best epoch by validation score
(accuracy, or R² for a regression; ties broken by validation loss); when validation stops improving
it first anneals the learning rate to zero over a few epochs, then stops. With a checkpoint path,
state is written after every epoch so an interrupted run continues where it stopped.

Data-parallel: when ``torch.distributed`` is initialized with more than one process (a Ray Train
worker group, or ``torchrun``), every process draws the same batch order, takes its share of each
batch (so the effective batch stays ``batch_size``), BatchNorm layers compute their statistics
over the whole batch (see :mod:`.distributed`) and the gradients are averaged by
``DistributedDataParallel``: the same steps as one process on the whole batch. All processes use
the first one's hardware plan, make the same early-stopping decisions from the same validation
scores, and only the first writes the checkpoint.

How the run uses the hardware (device, bf16/fp16 autocast, thread count, channels_last) is decided
once at the start of ``fit`` by :mod:`modelloop.train.fast`, measured where the config leaves it
open, logged, and recorded in the :class:`TrainResult`.

What is minimized and how validation is scored are the caller's to say (``Trainer(config, loss,
score)``; a task says its loss, see ``Task.loss``): the trainer never guesses them from the targets.
Without them it trains with :func:`cross_entropy` and scores accuracy.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.transforms import random_shift
from .distributed import batch_stats_over_processes
from .distributed import world as world_of_processes
from .fast import Plan, autocast, choose_plan, has_conv, is_image_batch, resolve_device, thread_scope

__all__ = ["TrainConfig", "TrainResult", "Trainer", "Unlabelled", "describe", "cross_entropy", "soft_cross_entropy",
           "squared_error", "SCORES"]

log = logging.getLogger(__name__)

_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: validation batch: activations of a small CNN at 128 images stay in the CPU's caches; on a 2-core
#: EPYC (fp32, 750 images) a batch of 1024 took 1.74 s, 256 took 0.97 s and 64 took 0.80 s, and
#: 128 keeps the per-batch overhead of larger models low
_EVAL_BATCH = 128
_DEVICES = ("auto", "cpu", "cuda")
#: how validation is scored (higher is better): "accuracy" of the argmax, or "r2" of a single output
SCORES = ("accuracy", "r2")


@dataclass
class TrainConfig:
    """Optimization settings and hardware choices for one fit.

    Hardware fields (each forces its choice; the default decides it, measuring where it matters):
        device: "auto" (CUDA when available, else CPU), "cpu" or "cuda".
        precision: "auto" (bf16/fp16 autocast only when a timed probe shows it faster), "fp32",
            "bf16" (autocast, CPU or CUDA) or "fp16" (autocast with gradient scaling; CUDA only).
        threads: CPU intra-op threads while training; None measures 1 vs all available cores.
            The previous thread count is restored when ``fit`` returns.
        channels_last: NHWC memory format; None turns it on for 4-D float inputs into models with
            convolutions.

    Raises:
        ValueError: a field is out of range (the message names the field, value and what is allowed).
    """

    max_epochs: int = 40
    patience: int = 6
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    shift: int = 0
    seed: int = 0
    time_limit_s: float | None = None
    checkpoint_path: str | Path | None = None
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    channels_last: bool | None = None

    def __post_init__(self) -> None:
        if self.precision not in _PRECISIONS:
            raise ValueError(f"TrainConfig.precision: received {self.precision!r}; expected one of {_PRECISIONS}")
        if self.device not in _DEVICES:
            raise ValueError(f"TrainConfig.device: received {self.device!r}; expected one of {_DEVICES}")
        if self.precision == "fp16" and self.device == "cpu":
            raise ValueError("TrainConfig.precision: received 'fp16' with device 'cpu'; fp16 autocast needs CUDA "
                             "(use 'bf16' or 'fp32' on CPU)")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"TrainConfig.threads: received {self.threads!r}; expected None or an integer >= 1")
        if self.batch_size < 1:
            raise ValueError(f"TrainConfig.batch_size: received {self.batch_size!r}; expected an integer >= 1")


@dataclass
class Unlabelled:
    """Inputs without labels that a classifier also learns from, by consistency under augmentation
    (FixMatch, Sohn et al. 2020): each step draws ``ratio`` unlabelled inputs per labelled one; a
    teacher's prediction on their weak view is their pseudo-label where its confidence reaches
    ``threshold``, and the student is trained to give that label to their strong view. Below the
    threshold an input adds nothing to the loss.

    Attributes:
        x: the unlabelled inputs as features (the same kind of tensor as the labelled ones).
        views: the task's augmentation: ``views.weak(x, generator)`` and ``views.strong(x, generator)``.
        threshold: the teacher's confidence an input needs before its pseudo-label counts.
        ratio: unlabelled inputs per labelled one in each batch.
        weight: the unlabelled loss's weight beside the labelled one.
        ema: the teacher is an exponential moving average of the student's weights with this decay
            (steadier pseudo-labels than the student's own; the first steps use a smaller decay,
            ``(1 + t) / (10 + t)``, so the random initial weights fade fast); 0: the student itself.
        align: distribution alignment: the teacher's probabilities are rescaled so that, on
            average, its pseudo-labels follow the labelled classes' proportions.

    Raises:
        ValueError: a field is out of range (naming it, what was received and what was expected).
    """

    x: torch.Tensor
    views: Any
    threshold: float = 0.95
    ratio: int = 3
    weight: float = 1.0
    ema: float = 0.99
    align: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"Unlabelled.threshold: received {self.threshold!r}; expected a number in (0, 1]")
        if self.ratio < 1:
            raise ValueError(f"Unlabelled.ratio: received {self.ratio!r}; expected an integer >= 1")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"Unlabelled.ema: received {self.ema!r}; expected a number in [0, 1)")


@dataclass
class TrainResult:
    """What ``Trainer.fit`` returns.

    ``best_state`` holds CPU, contiguous tensors whatever device and layout trained them.
    ``device``, ``precision``, ``threads`` and ``channels_last`` record how the run used the
    hardware; ``plan_source`` says how they were decided ("config", "probe", "cache",
    "checkpoint", "default") and ``probe`` the median seconds per step of each timed candidate.
    ``examples_per_s`` is training throughput (examples / seconds spent in training steps).
    ``timings`` breaks the fit's wall time down, in seconds: ``setup`` (moving the model, the
    optimizer, reading a checkpoint), ``probe`` (deciding the plan), ``steps`` (the training steps,
    augmentation and data slicing included), ``validation``, ``state_copies`` (keeping the best
    epoch's weights), ``checkpoint`` (writing it) and ``total``.
    ``best_val_score`` is the best epoch's validation score, named by ``score_name`` (one of
    :data:`SCORES`); each history row holds its epoch's score under ``val_accuracy``, the name
    reports and stored runs read.
    """

    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_val_score: float
    history: list[dict[str, float]] = field(default_factory=list)
    stopped: str = "max_epochs"  # max_epochs | early_stopping | time_limit
    seconds: float = 0.0
    device: str = "cpu"
    precision: str = "fp32"
    threads: int | None = None
    channels_last: bool = False
    plan_source: str = "config"
    probe: dict[str, float] = field(default_factory=dict)
    examples_per_s: float = 0.0
    score_name: str = "accuracy"
    #: data-parallel processes that trained it (1: this process alone)
    workers: int = 1
    #: the epoch a resumed fit continued from (None: it started from scratch)
    resumed_from_epoch: int | None = None
    #: with unlabelled inputs: ``examples``, ``threshold``, ``passed`` (how many the best epoch's
    #: teacher labels at that confidence, unaugmented) and the pseudo-labels' class counts
    unlabelled: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def best_val_accuracy(self) -> float:
        """The former name of :attr:`best_val_score` (which holds R² for a regression), still read."""
        return self.best_val_score


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy against class probabilities: ``-(target * log_softmax(logits)).sum(1).mean()``.

    logits (N, K), target (N, K) float rows summing to 1. Equals ``F.cross_entropy`` for one-hot rows.
    """
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits (N, K) against class indices (N,) int64, or against class
    probabilities (N, K) float (soft targets, e.g. a teacher's in distillation: :func:`soft_cross_entropy`).
    The classification loss, and the trainer's when it is given none."""
    if target.is_floating_point():
        return soft_cross_entropy(logits, target)
    return F.cross_entropy(logits.float(), target)


def squared_error(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the single output (N, 1) against values (N,), in the target's units
    (a regression network answers in them: see ``models.Regressor``)."""
    return F.mse_loss(outputs.float()[:, 0], target.float())


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the weights on CPU in the default (contiguous) layout, safe to serialize."""
    return {k: v.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
            for k, v in model.state_dict().items()}


class Trainer:
    """Fits one model. ``__init__`` stores the config; ``fit`` does the work.

    Args:
        config: optimization and hardware settings.
        loss: ``loss(outputs, targets) -> scalar tensor``, minimized on each batch (a task's
            ``Task.loss``); None: :func:`cross_entropy`.
        score: how validation is scored after each epoch (the best score picks the best epoch):
            "accuracy" (targets are class indices, or class probabilities scored against their
            argmax; the validation loss is the cross-entropy) or "r2" (targets are values; the
            validation loss is the mean squared error).

    Raises:
        ValueError: ``score`` is not one of :data:`SCORES`.
    """

    def __init__(self, config: TrainConfig, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 score: str = "accuracy") -> None:
        if score not in SCORES:
            raise ValueError(f"Trainer score: received {score!r}; expected one of {SCORES}")
        self.config = config
        self.loss = loss if loss is not None else cross_entropy
        self.score = score

    def _to_device(self, t: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
        if device.type == "cuda":
            # Pinned host memory lets the copy run asynchronously with the previous step's kernels.
            t = t.pin_memory().to(device, non_blocking=True)
        if channels_last and is_image_batch(t):
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    def _evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device | None = None,
                  channels_last: bool = False) -> tuple[float, float]:
        """(mean loss, score) in fp32 — the precision the weights are kept and served in.

        Score "accuracy": y is (N,) int64 class indices, or (N, K) float class probabilities (accuracy
        against the argmax); the loss is the cross-entropy. Score "r2": y is (N,) float values; then
        (mean squared error, R²).
        """
        device = device or torch.device("cpu")
        model.eval()
        if self.score == "r2":
            with torch.inference_mode():
                pred = torch.cat([model(self._to_device(x[i : i + _EVAL_BATCH], device, channels_last)).float()[:, 0]
                                  .cpu() for i in range(0, len(x), _EVAL_BATCH)]) if len(x) else torch.zeros(0)
            yv = y.float()
            sse = float(((pred - yv) ** 2).sum())
            sst = float(((yv - yv.mean()) ** 2).sum()) if len(yv) else 0.0
            return sse / max(len(yv), 1), (1.0 - sse / sst) if sst > 0 else 0.0
        with torch.inference_mode():
            # Summed on the device, read once at the end: no host sync per batch.
            losses = torch.zeros((), dtype=torch.float64, device=device)
            correct = torch.zeros((), dtype=torch.int64, device=device)
            for i in range(0, len(x), _EVAL_BATCH):
                xb = self._to_device(x[i : i + _EVAL_BATCH], device, channels_last)
                yb = y[i : i + _EVAL_BATCH].to(device)
                logits = model(xb).float()
                if yb.is_floating_point():
                    losses += soft_cross_entropy(logits, yb).double() * len(yb)
                    yb = yb.argmax(1)
                else:
                    losses += F.cross_entropy(logits, yb, reduction="sum").double()
                correct += (logits.argmax(1) == yb).sum()
        n = max(len(x), 1)
        return losses.item() / n, correct.item() / n

    def _make_step(self, x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool):
        """A factory for the probe: one full training step on the fixed batch (x, y), given model/opt/precision."""

        def make(model: nn.Module, opt: torch.optim.Optimizer, precision: str) -> Callable[[], None]:
            scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

            def step() -> None:
                xb = self._to_device(x, device, channels_last)
                yb = y.to(device, non_blocking=True)
                with autocast(device, precision):
                    loss = self.loss(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                _backward_and_step(loss, opt, scaler)

            return step

        return make

    def _optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        params = list(model.parameters())
        # The fused kernel updates every parameter in one pass instead of a chain of foreach ops
        # (the same update up to float rounding); it takes floating-point CPU and CUDA tensors.
        fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
        if fused:
            with contextlib.suppress(RuntimeError, ValueError):  # a torch without it for this device
                return torch.optim.AdamW(params, lr=self.config.lr, weight_decay=self.config.weight_decay,
                                         fused=True)
        return torch.optim.AdamW(params, lr=self.config.lr, weight_decay=self.config.weight_decay)

    def fit(
        self,
        model: nn.Module,
        train: tuple[torch.Tensor, torch.Tensor],
        val: tuple[torch.Tensor, torch.Tensor],
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
        resume: bool = False,
        unlabelled: Unlabelled | None = None,
    ) -> TrainResult:
        """Train ``model`` in place and return the best epoch's weights.

        Args:
            train: (x, y). x is usually float32 (N, C, H, W) already normalized, but may be any
                tensor the model accepts (e.g. int64 token ids (N, 2, L)); only a 4-D float x gets
                the random shift (``config.shift``) and the channels_last layout. y is int64 (N,)
                class indices, or float (N, K) class probabilities (soft targets, e.g. a teacher's
                for distillation), or float (N,) values to regress: whatever the trainer's loss takes.
            val: (x, y) scored in fp32 after every epoch by the trainer's score; it picks the best epoch.
            on_epoch: called after each epoch with (epoch, metrics); may raise to stop (e.g. pruning).
            resume: continue from ``config.checkpoint_path`` if it exists (with the hardware
                choices the interrupted run made, unless the config forces others).
            unlabelled: inputs without labels to learn from by consistency (classification
                only; see :class:`Unlabelled`). Validation stays on ``val`` alone.

        Returns:
            TrainResult; ``model`` ends on the device it came from, in the default memory format,
            holding the best epoch's weights.

        Raises:
            ModelloopError: ``device="cuda"`` without a CUDA device.
        """
        cfg = self.config
        t_fit = time.perf_counter()
        tm = dict.fromkeys(("setup", "probe", "steps", "validation", "state_copies", "checkpoint"), 0.0)
        x, y = train
        xv, yv = val
        params = list(model.parameters())
        home = params[0].device if params else torch.device("cpu")
        device = resolve_device(cfg.device)
        channels_last = (cfg.channels_last if cfg.channels_last is not None
                         else is_image_batch(x) and has_conv(model))
        model.to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last)

        gen = torch.Generator().manual_seed(cfg.seed)
        teacher: nn.Module | None = None
        ema_steps = 0
        if unlabelled is not None:
            # distribution alignment: the pseudo-labels' classes kept in the labelled data's proportions
            k = int(y.max()) + 1 if len(y) and not y.is_floating_point() else 1
            unlabelled.prior_ = (torch.bincount(y.long(), minlength=k).float() / max(len(y), 1)).to(device)
            unlabelled.running_ = unlabelled.prior_.clone()
        if unlabelled is not None and unlabelled.ema > 0:
            teacher = copy.deepcopy(model)
            teacher.requires_grad_(False)
        opt = self._optimizer(model)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.max_epochs)
        ckpt = Path(cfg.checkpoint_path) if cfg.checkpoint_path else None

        t0 = time.perf_counter()
        start_epoch, history = 0, []
        best = {"acc": float("-inf"), "loss": float("inf"), "epoch": -1, "state": _cpu_state(model)}
        bad_epochs, elapsed_before, saved_plan, resumed_from = 0, 0.0, None, None
        rank, world = world_of_processes()
        # Early stopping first anneals: when validation stops improving, the learning rate decays to
        # zero over a few more epochs (a plateau at a high rate is noise, not convergence), then stops.
        anneal: dict[str, float] | None = None  # {"start": epoch index, "lr": rate when it began}
        anneal_epochs = max(2, cfg.patience)
        if resume and ckpt is not None and ckpt.is_file():
            # weights_only: a checkpoint can never run code when loaded.
            state = torch.load(ckpt, weights_only=True, map_location="cpu")
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            gen.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            start_epoch, history = int(state["epoch"]) + 1, list(state["history"])
            best = {"acc": float(state["best_acc"]), "loss": float(state["best_loss"]),
                    "epoch": int(state["best_epoch"]), "state": state["best_state"]}
            bad_epochs, elapsed_before = int(state["bad_epochs"]), float(state["seconds"])
            saved_plan = state.get("plan")
            anneal = state.get("anneal")
            if teacher is not None and "teacher" in state:
                teacher.load_state_dict(state["teacher"])
                if state.get("best_teacher") is not None:
                    best["teacher"] = state["best_teacher"]
            resumed_from = start_epoch
            log.info("resumed training at epoch %d from %s", start_epoch + 1, ckpt)
        t0 -= elapsed_before

        n = len(x)
        bs = min(cfg.batch_size, max(n, 1))
        tm["setup"] = time.perf_counter() - t_fit
        t_probe = time.perf_counter()
        if saved_plan is not None and saved_plan.get("device") == str(device):
            # Same hardware choices as the interrupted run, so resuming does not change its numerics.
            plan = Plan(device=str(device), channels_last=channels_last, source="checkpoint",
                        precision=cfg.precision if cfg.precision != "auto" else saved_plan["precision"],
                        threads=cfg.threads if cfg.threads is not None else saved_plan["threads"])
        else:
            total_steps = (cfg.max_epochs - start_epoch) * math.ceil(n / bs)
            # The shift's cost is negligible next to a step, so the probe times unshifted batches.
            plan = choose_plan(model, (x[:bs], y[:bs]), self._make_step(x[:bs], y[:bs], device, channels_last),
                               self._optimizer, device=device, channels_last=channels_last,
                               precision=cfg.precision, threads=cfg.threads, total_steps=total_steps)
        if world > 1:  # every process trains as the first one measured: the same numerics everywhere
            import torch.distributed as dist

            shared = [plan]
            dist.broadcast_object_list(shared, src=0)
            plan = shared[0]
        tm["probe"] = time.perf_counter() - t_probe
        if plan.precision == "fp16" and device.type != "cuda":
            raise ValueError("TrainConfig.precision: received 'fp16' on CPU; fp16 autocast needs CUDA")
        log.info("training on %s, %s, %s threads, channels_last=%s (%s%s)", plan.device, plan.precision,
                 plan.threads if plan.threads is not None else "default", plan.channels_last, plan.source,
                 f": {plan.probe}" if plan.probe else "")
        scaler = torch.amp.GradScaler(device.type, enabled=plan.precision == "fp16")
        net: nn.Module = model
        stack = contextlib.ExitStack()
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            # BatchNorm statistics over the whole batch, as one process has them
            if device.type == "cuda":
                net = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            else:
                stack.enter_context(batch_stats_over_processes(model))
            # Gradients averaged over the processes; the first process's weights are broadcast now.
            net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

        stopped = "max_epochs"
        step_seconds, step_examples = 0.0, 0
        try:
            with thread_scope(plan.threads):
                for epoch in range(start_epoch, cfg.max_epochs):
                    model.train()
                    perm = torch.randperm(n, generator=gen)
                    total = torch.zeros((), device=device)
                    seen = 0
                    u_seen, u_passed = 0, torch.zeros((), device=device)
                    t_epoch = time.perf_counter()
                    for i in range(0, n, cfg.batch_size):
                        idx = perm[i : i + cfg.batch_size]
                        if len(idx) < 2 * world and n >= 2 * world:
                            continue  # BatchNorm cannot train on a batch of one
                        xb = x[idx]
                        if cfg.shift > 0 and is_image_batch(xb):
                            xb = random_shift(xb, cfg.shift, gen)  # on the whole batch: same draws everywhere
                        if world > 1:  # this process's share of the batch
                            idx, xb = idx[rank::world], xb[rank::world]
                        yb = y[idx].to(device, non_blocking=True)
                        if unlabelled is None:
                            xb = self._to_device(xb, device, channels_last)
                            with autocast(device, plan.precision):
                                loss = self.loss(net(xb), yb)
                        else:
                            loss, used = self._consistency_loss(
                                net, model if teacher is None else teacher, xb, yb, unlabelled, gen, rank, world,
                                device, channels_last, plan.precision)
                            u_seen += used[0]
                            u_passed += used[1]
                        opt.zero_grad(set_to_none=True)
                        _backward_and_step(loss, opt, scaler)
                        if teacher is not None:  # warm-up: early on the teacher follows the student closely
                            ema_steps += 1
                            _ema_update(teacher, model, min(unlabelled.ema, (1 + ema_steps) / (10 + ema_steps)))
                        # Summed on the device: no host sync per step.
                        total += loss.detach() * len(idx)
                        seen += len(idx)
                    if world > 1:  # the mean over every process's examples
                        import torch.distributed as dist

                        sums = torch.stack([total.float().cpu(), torch.tensor(float(seen))])
                        dist.all_reduce(sums)
                        total, seen = sums[0], int(sums[1])
                    train_loss = total.item() / max(seen, 1)  # the one sync per epoch
                    step_seconds += time.perf_counter() - t_epoch
                    step_examples += seen
                    sched.step()
                    if anneal is not None:
                        k = min(epoch + 1 - anneal["start"], anneal_epochs)
                        for g in opt.param_groups:
                            g["lr"] = anneal["lr"] * 0.5 * (1 + math.cos(math.pi * k / anneal_epochs))
                    t_val = time.perf_counter()
                    val_loss, val_acc = self._evaluate(model, xv, yv, device, channels_last)
                    tm["validation"] += time.perf_counter() - t_val
                    row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss,
                           "val_accuracy": val_acc, "lr": opt.param_groups[0]["lr"]}
                    if unlabelled is not None:  # share of the drawn unlabelled inputs whose pseudo-label counted
                        row["pseudo_label_rate"] = float(u_passed.item()) / max(u_seen, 1)
                    history.append(row)
                    if val_acc > best["acc"] or (val_acc == best["acc"] and val_loss < best["loss"]):
                        t_copy = time.perf_counter()
                        best = {"acc": val_acc, "loss": val_loss, "epoch": epoch + 1, "state": _cpu_state(model)}
                        if teacher is not None:
                            best["teacher"] = _cpu_state(teacher)
                        tm["state_copies"] += time.perf_counter() - t_copy
                        bad_epochs = 0
                    else:
                        bad_epochs += 1
                    seconds = time.perf_counter() - t0
                    log.debug("epoch %d: %s", epoch + 1, row)
                    if ckpt is not None and rank == 0:
                        t_ckpt = time.perf_counter()
                        ckpt.parent.mkdir(parents=True, exist_ok=True)
                        tmp = ckpt.with_suffix(".tmp")
                        torch.save({
                            "model": _cpu_state(model), "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(), "generator": gen.get_state(),
                            "torch_rng": torch.get_rng_state(), "epoch": epoch, "history": history,
                            "best_acc": best["acc"], "best_loss": best["loss"], "best_epoch": best["epoch"],
                            "best_state": best["state"], "bad_epochs": bad_epochs, "seconds": seconds,
                            "plan": {"device": plan.device, "precision": plan.precision, "threads": plan.threads},
                            "anneal": anneal,
                            **({"teacher": _cpu_state(teacher), "best_teacher": best.get("teacher")}
                               if teacher is not None else {}),
                        }, tmp)
                        tmp.replace(ckpt)
                        tm["checkpoint"] += time.perf_counter() - t_ckpt
                    if on_epoch is not None:
                        on_epoch(epoch, row)
                    if anneal is not None and epoch + 1 - anneal["start"] >= anneal_epochs:
                        stopped = "early_stopping"
                        break
                    if anneal is None and bad_epochs >= cfg.patience:
                        if epoch + 1 >= cfg.max_epochs:
                            stopped = "early_stopping"
                            break
                        anneal = {"start": epoch + 1, "lr": float(opt.param_groups[0]["lr"])}
                        log.debug("no improvement for %d epochs: annealing over %d more", bad_epochs, anneal_epochs)
                    out_of_time = cfg.time_limit_s is not None and seconds >= cfg.time_limit_s
                    if world > 1 and cfg.time_limit_s is not None:  # the first process's clock decides for all
                        import torch.distributed as dist

                        flag = torch.tensor([float(out_of_time)])
                        dist.broadcast(flag, 0)
                        out_of_time = bool(flag.item())
                    if out_of_time:
                        stopped = "time_limit"
                        break
        finally:
            # Whatever happened (including on_epoch raising), hand the model back as it came.
            stack.close()
            model.to(memory_format=torch.contiguous_format)
            model.to(home)
        model.load_state_dict(best["state"])
        summary = None
        if unlabelled is not None:
            judge = model
            if teacher is not None and "teacher" in best:
                teacher.load_state_dict(best["teacher"])
                judge = teacher.to("cpu")
            summary = pseudo_label_summary(judge, unlabelled.x, unlabelled.threshold)
        tm["steps"] = step_seconds
        tm["total"] = time.perf_counter() - t_fit
        return TrainResult(best["state"], best["epoch"], best["acc"], history, stopped, time.perf_counter() - t0,
                           device=plan.device, precision=plan.precision, threads=plan.threads,
                           channels_last=plan.channels_last, plan_source=plan.source, probe=dict(plan.probe),
                           examples_per_s=step_examples / step_seconds if step_seconds > 0 else 0.0,
                           score_name=self.score, workers=world, resumed_from_epoch=resumed_from,
                           unlabelled=summary, timings={k: round(v, 4) for k, v in tm.items()})

    def _consistency_loss(self, net: nn.Module, teacher: nn.Module, xb: torch.Tensor, yb: torch.Tensor,
                          u: Unlabelled, gen: torch.Generator, rank: int, world: int, device: torch.device,
                          channels_last: bool, precision: str) -> tuple[torch.Tensor, tuple[int, torch.Tensor]]:
        """One batch's loss with unlabelled inputs: the task's loss on the labelled batch ``xb``
        (already augmented, this process's share) plus ``u.weight`` times the cross-entropy of the
        strong views against the teacher's confident pseudo-labels of the weak views (averaged over
        every drawn unlabelled input, so the uncertain ones weigh zero) -> (loss, (inputs drawn,
        how many passed the threshold))."""
        m = len(yb) * world * u.ratio  # drawn for the whole batch, so every process draws the same
        pick = torch.randint(len(u.x), (m,), generator=gen)
        ub = u.x[pick]
        weak, strong = u.views.weak(ub, gen), u.views.strong(ub, gen)
        if world > 1:
            weak, strong = weak[rank::world], strong[rank::world]
        was_training = teacher.training
        teacher.eval()  # BatchNorm's running statistics: the pseudo-label does not depend on the batch
        with torch.no_grad(), autocast(device, precision):
            probs = torch.softmax(teacher(self._to_device(weak, device, channels_last)).float(), 1)
        teacher.train(was_training)
        if u.align and probs.shape[1] == len(u.prior_):
            # Distribution alignment (ReMixMatch): scale by the labelled class prior over the running
            # mean of the teacher's predictions, so a teacher leaning to one class cannot pull every
            # pseudo-label there.
            u.running_ = 0.99 * u.running_ + 0.01 * probs.mean(0)
            probs = probs * (u.prior_ / u.running_.clamp_min(1e-6))
            probs = probs / probs.sum(1, keepdim=True)
        confidence, pseudo = probs.max(1)
        mask = (confidence >= u.threshold).float()
        both = self._to_device(torch.cat([xb, strong]), device, channels_last)
        with autocast(device, precision):
            out = net(both)
            labelled = self.loss(out[: len(yb)], yb)
            unlab = (F.cross_entropy(out[len(yb):].float(), pseudo, reduction="none") * mask).mean()
        return labelled + u.weight * unlab, (len(pseudo), mask.sum().detach())


def _backward_and_step(loss: torch.Tensor, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """Backward and optimizer step, through the gradient scaler only when it is on (fp16)."""
    if scaler.is_enabled():
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()


def _ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher <- decay * teacher + (1 - decay) * student, weights and BatchNorm statistics alike."""
    with torch.no_grad():
        for t, s in zip(teacher.state_dict().values(), student.state_dict().values(), strict=True):
            if t.is_floating_point():
                t.mul_(decay).add_(s.detach(), alpha=1 - decay)
            else:
                t.copy_(s)


def pseudo_label_summary(model: nn.Module, x: torch.Tensor, threshold: float) -> dict[str, Any]:
    """How many of the unlabelled inputs ``x`` (unaugmented) ``model`` labels with at least
    ``threshold`` confidence, and the class counts of those pseudo-labels."""
    model.eval()
    with torch.inference_mode():
        probs = torch.cat([torch.softmax(model(x[i : i + 1024]).float(), 1) for i in range(0, len(x), 1024)]) \
            if len(x) else torch.zeros((0, 1))
    confidence, label = probs.max(1)
    passed = confidence >= threshold
    counts = torch.bincount(label[passed], minlength=probs.shape[1]).tolist() if len(x) else []
    return {"examples": int(len(x)), "threshold": float(threshold), "passed": int(passed.sum()),
            "pseudo_label_counts": counts}


def describe(result: TrainResult) -> dict[str, Any]:
    """A JSON-able summary of a fit for manifests and reports, including how it used the hardware.

    The best validation score is written as ``best_val_score`` (named by ``score_name``) and, for
    the manifests and tools that read the former name, as ``best_val_accuracy`` too.
    """
    return {"best_epoch": result.best_epoch, "best_val_score": result.best_val_score,
            "score_name": result.score_name, "best_val_accuracy": result.best_val_score,
            "epochs_run": len(result.history), "stopped": result.stopped, "seconds": round(result.seconds, 2),
            "device": result.device, "precision": result.precision, "threads": result.threads,
            "channels_last": result.channels_last, "plan": result.plan_source,
            "examples_per_s": round(result.examples_per_s, 1), "workers": result.workers,
            "resumed_from_epoch": result.resumed_from_epoch}
