"""How a training run uses the hardware: device, precision, thread count and memory format.

The Trainer asks :func:`choose_plan` once per fit. Anything the config fixes is taken as given;
anything left on ``auto``/``None`` is decided here:

- device: CUDA when available, else CPU.
- channels_last: on for 4-D float inputs into a model with 2-D convolutions (oneDNN and cuDNN
  run NHWC convolutions faster), off otherwise. Not probed: it never changes results beyond
  float rounding, and it is a layout decision, not a speed gamble.
- precision and threads: measured. A few real training steps are timed for each candidate
  (fp32 vs bf16 autocast where the CPU has native bf16; 1 thread vs all available cores) on a
  *copy* of the model with its own optimizer, interleaved round by round so that a burst of load
  from other processes hits every candidate alike, and the fastest median wins. bf16 must beat
  fp32 by :data:`BF16_MARGIN` to be chosen, since it changes numerics. The global RNG state is
  restored afterwards, so a probed run trains exactly like one with the same choices forced.

Decisions are cached per (model class, parameter shapes, example shape and dtype, batch size,
target kind, device, candidates) for :data:`CACHE_TTL_S` seconds, so a hyper-parameter search
probes once per model shape instead of once per trial.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["Plan", "available_cores", "autocast", "choose_plan", "clear_plan_cache", "cpu_has_native_bf16",
           "has_conv", "is_image_batch", "resolve_device", "thread_scope"]

log = logging.getLogger(__name__)

BF16_MARGIN = 0.10  # bf16 is chosen only when its median step is at least 10% shorter than fp32's
CACHE_TTL_S = 600.0  # load on a shared machine drifts; re-measure after this long
MIN_STEPS_TO_PROBE = 60  # below this many training steps in the whole run, probing costs more than it saves
_PROBE_ROUNDS = 3  # timed steps per candidate (after one untimed warm-up step)
_DROP_FACTOR = 2.0  # a candidate this much slower than the best after round one is not timed further

_PLAN_CACHE: dict[tuple, tuple[float, Plan]] = {}


@dataclass
class Plan:
    """The hardware choices of one training run.

    ``precision`` is "fp32", "bf16" or "fp16" (autocast dtype; weights and optimizer stay fp32).
    ``threads`` is the intra-op thread count used while training (None: left as it was, e.g. CUDA).
    ``probe`` maps each timed candidate ("fp32/1t", "bf16/2t", ...) to its median seconds per step;
    empty when nothing was measured. ``source`` says how the plan came about: "config", "probe",
    "cache", "checkpoint" or "default" (too little work to be worth measuring).
    """

    device: str = "cpu"
    precision: str = "fp32"
    threads: int | None = None
    channels_last: bool = False
    probe: dict[str, float] = field(default_factory=dict)
    source: str = "config"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX-512 BF16 or AMX); emulated bf16 is never faster."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_device(requested: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU. Raises ModelloopError for "cuda" without a GPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        from ..errors import ModelloopError

        raise ModelloopError("training device 'cuda': no CUDA device is available; expected 'cpu' or 'auto'")
    return torch.device(requested)


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def is_image_batch(x: torch.Tensor) -> bool:
    """A 4-D floating-point tensor (N, C, H, W): the only input that gets layout changes or shifts."""
    return x.dim() == 4 and x.is_floating_point()


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for ``precision`` on ``device``; a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def thread_scope(threads: int | None) -> Iterator[None]:
    """Set torch's intra-op thread count for the block and restore the previous count after it."""
    before = torch.get_num_threads()
    if threads is not None and threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def clear_plan_cache() -> None:
    """Forget cached decisions (e.g. after the machine's load changed)."""
    _PLAN_CACHE.clear()


def _candidates(device: torch.device, precision: str, threads: int | None) -> tuple[list[str], list[int | None]]:
    if precision != "auto":
        precisions = [precision]
    elif device.type == "cuda":
        precisions = ["fp32", "bf16" if torch.cuda.is_bf16_supported() else "fp16"]
    else:
        precisions = ["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"]
    if device.type != "cpu":
        thread_opts: list[int | None] = [None]
    elif threads is not None:
        thread_opts = [threads]
    else:
        cores = available_cores()
        thread_opts = [1, cores] if cores > 1 else [1]
    return precisions, thread_opts


def choose_plan(
    model: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    make_step: Callable[[nn.Module, torch.optim.Optimizer, str], Callable[[], None]],
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    *,
    device: torch.device,
    channels_last: bool,
    precision: str,
    threads: int | None,
    total_steps: int,
) -> Plan:
    """Decide precision and thread count, measuring what the caller left open.

    Args:
        model: the model as it will train (already on ``device``, in its memory format). Not modified.
        batch: one training batch (x, y) as the step sees it; used for the timed steps.
        make_step: ``make_step(model_copy, optimizer, precision)`` returns a function doing one full
            training step (forward, loss, backward, optimizer step) on ``batch``.
        make_optimizer: builds a fresh optimizer for a model copy.
        precision: "auto" to measure, else the forced value. threads: None to measure, else forced.
        total_steps: training steps the run will take at most; below :data:`MIN_STEPS_TO_PROBE`
            nothing is measured and open choices fall back to fp32 and the current thread count.

    Returns:
        The plan; its ``probe`` holds the median seconds per step of every timed candidate.
    """
    precisions, thread_opts = _candidates(device, precision, threads)
    base = Plan(device=str(device), channels_last=channels_last)
    if len(precisions) == 1 and len(thread_opts) == 1:
        return Plan(**{**base.to_dict(), "precision": precisions[0], "threads": thread_opts[0], "source": "config"})
    if total_steps < MIN_STEPS_TO_PROBE:
        keep_threads = threads if threads is not None or device.type != "cpu" else torch.get_num_threads()
        fallback = precision if precision != "auto" else "fp32"
        return Plan(**{**base.to_dict(), "precision": fallback, "threads": keep_threads, "source": "default"})

    xb, yb = batch
    key = (str(device), type(model).__qualname__, tuple(tuple(p.shape) for p in model.parameters()),
           tuple(xb.shape), xb.dtype, yb.dtype, yb.dim(), channels_last, tuple(precisions), tuple(thread_opts))
    hit = _PLAN_CACHE.get(key)
    if hit is not None and time.monotonic() - hit[0] < CACHE_TTL_S:
        plan = copy.deepcopy(hit[1])
        plan.source = "cache"
        return plan

    timings = _measure(model, make_step, make_optimizer, device, precisions, thread_opts)
    best: dict[str, Any] = {}
    for (prec, th), secs in timings.items():
        med = statistics.median(secs)
        if prec == "bf16" and precision == "auto":
            fp32 = [statistics.median(v) for (p, t), v in timings.items() if p == "fp32" and t == th]
            if fp32 and med > (1.0 - BF16_MARGIN) * fp32[0]:
                continue  # not clearly faster: keep fp32 numerics at this thread count
        if not best or med < best["median"]:
            best = {"precision": prec, "threads": th, "median": med}
    plan = Plan(device=str(device), precision=best["precision"], threads=best["threads"], channels_last=channels_last,
                probe={_label(p, t): round(statistics.median(v), 5) for (p, t), v in timings.items()},
                source="probe")
    _PLAN_CACHE[key] = (time.monotonic(), copy.deepcopy(plan))
    return plan


def _label(precision: str, threads: int | None) -> str:
    return precision if threads is None else f"{precision}/{threads}t"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(model, make_step, make_optimizer, device, precisions, thread_opts) -> dict[tuple, list[float]]:
    """Median-friendly timings: one warm-up then interleaved timed rounds, slow candidates dropped early."""
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
    steps: dict[tuple, Callable[[], None]] = {}
    try:
        for prec in precisions:
            clone = copy.deepcopy(model)
            clone.train()
            # One clone per precision: the thread count does not change what a step computes.
            step = make_step(clone, make_optimizer(clone), prec)
            for th in thread_opts:
                steps[(prec, th)] = step
        timings: dict[tuple, list[float]] = {k: [] for k in steps}
        for (_, th), step in steps.items():  # warm-up: first calls build kernels and allocate
            with thread_scope(th):
                step()
        _sync(device)
        live = list(steps)
        for rnd in range(_PROBE_ROUNDS):
            for k in live:
                with thread_scope(k[1]):
                    t = time.perf_counter()
                    steps[k]()
                    _sync(device)
                    timings[k].append(time.perf_counter() - t)
            if rnd == 0 and len(live) > 1:
                fastest = min(timings[k][0] for k in live)
                live = [k for k in live if timings[k][0] <= _DROP_FACTOR * fastest]
        return {k: v for k, v in timings.items() if v}
    finally:
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
