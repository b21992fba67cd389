"""How a training run uses the hardware: device, precision, thread count and memory format.

The Trainer asks :func:`choose_plan` once per fit. Anything the config fixes is taken as given;
anything left on ``auto``/``None`` is decided here:

- device: CUDA when available, else CPU.
- channels_last: on for 4-D float inputs into a model with 2-D convolutions (oneDNN and cuDNN
  run NHWC convolutions faster), off otherwise. Not probed: a layout, not a numerics gamble. (One
  caveat, measured against float64: torch's CPU BatchNorm accumulates channels_last batch
  statistics less exactly in training mode, ~1e-4 relative instead of ~1e-7; accuracy is unchanged.)
- precision and threads: measured. Real training steps on one batch are timed on a *copy* of
  the model with its own optimizer: first the thread counts (1 vs all available cores) at fp32,
  then the precisions (fp32 vs bf16 autocast where the CPU has native bf16; fp32 vs bf16/fp16 on
  CUDA) at the winning thread count. Candidates run interleaved, round by round, so a burst of load
  from other processes hits each alike; the lowest median wins, and a candidate far slower in its
  first step is dropped at once (on a contended machine a step on two threads can take seconds).
  A lower precision must beat fp32 by :data:`PRECISION_MARGIN`, since it changes numerics. The RNG
  state is restored afterwards, so a probed run trains exactly like one with the same choices forced.

Decisions are cached per (model class, parameter shapes, example shape and dtype, batch size,
target kind, device, candidates) for :data:`modelloop.hardware.CACHE_TTL_S` seconds, so a hyper-parameter search
probes once per model shape instead of once per trial. The cache is kept on disk too
(``<cache dir>/train-plans.json``, see :func:`modelloop.settings.cache_dir`), its keys naming the
machine (CPU model, usable cores, torch version), so a later process fitting the same shape on the
same machine skips the probe as well. A cached plan is reused only while the 1-minute load average
stays within :func:`load_tolerance` of the load it was measured under: the plan is still decided by
timing, never read off the load average, but when other jobs have arrived or left since, the thread
count that won may no longer win, so it is measured again. The interleaved timing and the cache are
:mod:`modelloop.hardware`'s, shared with the text encoder's thread choice.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ..hardware import ChoiceCache, available_cores, file_cache, machine_key, thread_scope, time_interleaved

__all__ = ["Plan", "available_cores", "autocast", "choose_plan", "clear_plan_cache", "cpu_has_native_bf16",
           "has_conv", "is_image_batch", "load_tolerance", "resolve_device", "thread_scope"]

log = logging.getLogger(__name__)

PRECISION_MARGIN = 0.10  # bf16/fp16 is chosen only when its median step is at least 10% shorter than fp32's
MIN_STEPS_TO_PROBE = 60  # below this many training steps in the whole run, probing costs more than it saves
# Timed steps per candidate after its warm-up. Two instead of three made the same choice in 4 of 4
# interleaved trials on a loaded 2-core EPYC (bf16 on one thread; two threads ~10x slower per step)
# and cost 2.2 s instead of 2.7 s there (median): the choices that matter are far apart.
PROBE_ROUNDS = 2
PLAN_CACHE_FILE = "train-plans.json"



@dataclass
class Plan:
    """The hardware choices of one training run.

    ``precision`` is "fp32", "bf16" or "fp16" (autocast dtype; weights and optimizer stay fp32).
    ``threads`` is the intra-op thread count used while training (None: left as it was, e.g. CUDA).
    ``probe`` maps each timed candidate ("fp32/1t", "bf16/2t", ...) to its median seconds per step
    (a candidate dropped after its first step shows that step's time); empty when nothing was measured.
    ``source`` says how the plan came about: "config", "probe", "cache", "checkpoint" or "default"
    (too little work to be worth measuring).
    """

    device: str = "cpu"
    precision: str = "fp32"
    threads: int | None = None
    channels_last: bool = False
    probe: dict[str, float] = field(default_factory=dict)
    source: str = "config"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def _plan_cache() -> ChoiceCache:
    """The plan cache, in memory and in ``<cache dir>/train-plans.json``."""
    return file_cache(PLAN_CACHE_FILE)


def clear_plan_cache() -> None:
    """Forget cached plans, in memory and on disk, so the next fit measures again."""
    cache = _plan_cache()
    cache.clear()
    if cache.path is not None:
        with contextlib.suppress(OSError):
            cache.path.unlink(missing_ok=True)


def _load_now() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # not available here: every cached plan looks as fresh as its age says
        return 0.0


def load_tolerance() -> float:
    """How far the 1-minute load average may move before a cached plan is measured again:
    half the usable cores, at least 1 (one more busy thread than when it was measured)."""
    return max(1.0, available_cores() / 2)


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
        return replace(base, precision=precisions[0], threads=thread_opts[0], source="config")
    if total_steps < MIN_STEPS_TO_PROBE:
        keep_threads = threads if threads is not None or device.type != "cpu" else torch.get_num_threads()
        fallback = precision if precision != "auto" else "fp32"
        return replace(base, precision=fallback, threads=keep_threads, source="default")

    xb, yb = batch
    key = (str(device), type(model).__qualname__, tuple(tuple(p.shape) for p in model.parameters()),
           tuple(xb.shape), xb.dtype, yb.dtype, yb.dim(), channels_last, tuple(precisions), tuple(thread_opts))
    gpu = f"; {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    cache_key = f"{machine_key()}; torch {torch.__version__}{gpu} | {key!r}"
    cache = _plan_cache()
    hit = cache.get(cache_key)
    if isinstance(hit, dict) and abs(_load_now() - float(hit.get("load", 0.0))) <= load_tolerance():
        with contextlib.suppress(KeyError, TypeError, ValueError):  # an entry of another version: measure again
            plan = Plan(**hit["plan"])
            plan.source = "cache"
            return plan

    probe = _Probe(model, make_step, make_optimizer, device)
    try:
        # Stage 1, threads at the first precision (fp32 when open); stage 2, precisions at the
        # winning thread count. Thread count and precision barely interact, and this skips timing
        # the slow corner (e.g. bf16 on two contended threads) that a full grid would pay for.
        first = precisions[0]
        threads_won = thread_opts[0]
        if len(thread_opts) > 1:
            timed = probe.time([(first, t) for t in thread_opts])
            threads_won = min(timed, key=lambda k: statistics.median(timed[k]))[1]
        timings = {k: statistics.median(v) for k, v in probe.timings.items()}
        if len(precisions) > 1:
            timed = probe.time([(p, threads_won) for p in precisions])
            timings.update({k: statistics.median(v) for k, v in timed.items()})
    finally:
        probe.close()
    won = (first, threads_won)
    for p in precisions[1:]:
        k = (p, threads_won)
        margin = PRECISION_MARGIN if first == "fp32" and precision == "auto" else 0.0
        # Lower precision changes numerics, so it has to be clearly faster, not just within the noise.
        if k in timings and timings[k] < (1.0 - margin) * timings[won]:
            won = k
    plan = Plan(device=str(device), precision=won[0], threads=won[1], channels_last=channels_last,
                probe={_label(p, t): round(v, 5) for (p, t), v in timings.items()}, source="probe")
    cache.put(cache_key, {"plan": plan.to_dict(), "load": _load_now()})
    return plan


def _label(precision: str, threads: int | None) -> str:
    return precision if threads is None else f"{precision}/{threads}t"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Probe:
    """Times training steps of model copies; restores the RNG state (CPU and CUDA) on ``close``."""

    def __init__(self, model, make_step, make_optimizer, device: torch.device) -> None:
        self.model, self.make_step, self.make_optimizer, self.device = model, make_step, make_optimizer, device
        self.cpu_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
        self.steps: dict[str, Callable[[], None]] = {}  # one model copy per precision
        self.warm: set[tuple] = set()
        self.timings: dict[tuple, list[float]] = {}

    def _step(self, precision: str) -> Callable[[], None]:
        if precision not in self.steps:
            clone = copy.deepcopy(self.model)
            clone.train()
            self.steps[precision] = self.make_step(clone, self.make_optimizer(clone), precision)
        return self.steps[precision]

    def _run(self, key: tuple) -> float:
        with thread_scope(key[1]):
            t = time.perf_counter()
            self._step(key[0])()
            _sync(self.device)
            return time.perf_counter() - t

    def time(self, keys: list[tuple]) -> dict[tuple, list[float]]:
        """Warm each new candidate up once, then time interleaved rounds; returns this call's timings.

        A candidate whose warm-up or first timed step is far slower than the fastest one's is not
        timed further: on a contended machine one step of a bad choice can cost seconds.
        """
        out = time_interleaved(self._run, keys, self.warm, rounds=PROBE_ROUNDS)
        self.timings.update(out)
        return out

    def close(self) -> None:
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
