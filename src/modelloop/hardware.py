"""Measured hardware choices: which thread count (or other setting) runs a piece of work fastest.

One mechanism, used by the Trainer (precision and threads of a training step, ``train/fast.py``)
and by the text encoder (intra-op threads of an encoder forward pass, torch or ONNX Runtime):

- :func:`time_interleaved` times candidates round by round, interleaved, so a burst of load from
  other processes hits each alike; a candidate far slower in its warm-up or first timed run is
  dropped at once (on a contended machine one run of a bad choice can cost seconds).
- :class:`ChoiceCache` keeps decisions for :data:`CACHE_TTL_S` seconds, in memory and optionally
  in a JSON file, so a search or a server restart does not re-measure what it just measured, and
  a decision is measured again once it is stale (load on a shared machine drifts).
- :func:`choose_threads` puts the two together for the common question "1 thread or all of them?".
  The answer is never read off the load average: on a quiet 2-core machine the load average can
  say "busy" while two threads still run faster, and the other way round.

Cache keys should name the machine (:func:`machine_key`: CPU model and usable cores) and the
shape of the work, so a decision made for one never answers for another.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import os
import statistics
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CACHE_TTL_S", "ChoiceCache", "ThreadChoice", "available_cores", "choose_threads", "cpu_model",
           "file_cache", "machine_key", "ort_session", "thread_cache", "thread_scope", "time_interleaved"]

log = logging.getLogger(__name__)

CACHE_TTL_S = 600.0  # load on a shared machine drifts; re-measure after this long
PROBE_ROUNDS = 3  # timed runs per candidate (after one untimed warm-up run)
DROP_FACTOR = 2.0  # a candidate this much slower than the best after round one is not timed further
WARMUP_DROP_FACTOR = 4.0  # ... or this much slower already in its warm-up run (which includes set-up)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


@functools.cache
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (e.g. 'AMD EPYC'), or 'unknown CPU'. Read once per
    process: it is part of every cache key, and the text encoder builds one per call."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return "unknown CPU"


def machine_key() -> str:
    """CPU model and usable cores: the part of a cache key that says which machine measured it."""
    return f"{cpu_model()} x{available_cores()}"


@contextlib.contextmanager
def thread_scope(threads: int | None) -> Iterator[None]:
    """Set torch's intra-op thread count for the block and restore the previous count after it."""
    import torch

    before = torch.get_num_threads()
    if threads is not None and threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def ort_session(path: str | os.PathLike[str], threads: int) -> Any:
    """An ONNX Runtime CPU session of the model file ``path`` with ``threads`` intra-op threads (one
    inter-op thread: the graphs here are chains); its warnings (unused initializers and the like)
    are not a user's business. A session's thread pool is fixed when it is created."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def time_interleaved(run: Callable[[Any], float], keys: list[Any], warm: set | None = None,
                     rounds: int = PROBE_ROUNDS) -> dict[Any, list[float]]:
    """Time each candidate ``rounds`` times, interleaved; returns {key: seconds of each timed run}.

    Args:
        run: ``run(key)`` does the work once with candidate ``key`` and returns its seconds.
        keys: the candidates.
        warm: keys already warmed up (updated in place); each new key runs once untimed first.
        rounds: timed runs per candidate.

    A candidate whose warm-up or first timed run is far slower than the fastest one's
    (:data:`WARMUP_DROP_FACTOR`, :data:`DROP_FACTOR`) is not timed further; its list then holds
    that one run.
    """
    warm = set() if warm is None else warm
    warmups = {k: run(k) for k in keys if k not in warm}
    warm.update(keys)
    live = list(keys)
    if len(warmups) == len(keys) and len(keys) > 1:
        fastest = min(warmups.values())
        live = [k for k in keys if warmups[k] <= WARMUP_DROP_FACTOR * fastest]
    out: dict[Any, list[float]] = {k: [] for k in keys}
    for rnd in range(rounds):
        for k in live:
            out[k].append(run(k))
        if rnd == 0 and len(live) > 1:
            fastest = min(out[k][0] for k in live)
            live = [k for k in live if out[k][0] <= DROP_FACTOR * fastest]
    return {k: v if v else [warmups[k]] for k, v in out.items()}


class ChoiceCache:
    """Decisions by key, each valid for ``ttl_s`` seconds; in memory, and in ``path`` when given.

    Keys are any hashable in memory; only string keys are written to ``path`` (JSON, values must
    be JSON-able). The file is rewritten atomically; two processes writing at once may lose one
    entry, which costs one more measurement, never a wrong answer.
    """

    def __init__(self, ttl_s: float = CACHE_TTL_S, path: str | os.PathLike[str] | None = None) -> None:
        self.ttl_s = ttl_s
        self.path = Path(path) if path is not None else None
        self._memory: dict[Hashable, tuple[float, Any]] = {}   # key -> (wall-clock time, value)
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        """The value stored under ``key`` if it is younger than ``ttl_s``, else None (a copy)."""
        now = time.time()
        with self._lock:
            hit = self._memory.get(key)
            if (hit is None or now - hit[0] >= self.ttl_s) and isinstance(key, str):
                # not held, or stale here: another process may have measured it since
                found = self._read().get(key)
                if found is not None:
                    hit = (float(found[0]), found[1])
                    self._memory[key] = hit
        if hit is None or now - hit[0] >= self.ttl_s:
            return None
        return copy.deepcopy(hit[1])

    def put(self, key: Hashable, value: Any) -> None:
        stamp = time.time()
        with self._lock:
            self._memory[key] = (stamp, copy.deepcopy(value))
            if isinstance(key, str) and self.path is not None:
                entries = {k: v for k, v in self._read().items() if stamp - float(v[0]) < self.ttl_s}
                entries[key] = [stamp, value]
                try:
                    from .settings import write_private

                    # not private_dir: the cache folder may be shared, and these are no secrets
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    write_private(self.path, json.dumps(entries, sort_keys=True))
                except OSError as exc:  # a read-only home: the decision still holds in memory
                    log.debug("thread choices: cannot write %s (%s)", self.path, exc)

    def clear(self) -> None:
        """Forget every decision held in memory (the file, if any, is left alone)."""
        with self._lock:
            self._memory.clear()

    def _read(self) -> dict[str, list]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # unreadable or half-written by an old version: measure again
        if not isinstance(data, dict):
            return {}
        # [wall-clock time, value]; anything else (edited by hand, an old format) is measured again
        return {k: v for k, v in data.items() if isinstance(v, list) and len(v) == 2
                and isinstance(v[0], (int, float)) and not isinstance(v[0], bool)}


@dataclass
class ThreadChoice:
    """A thread count and how it was decided.

    ``source`` is "probe" (measured now), "cache" (measured earlier, not yet stale) or "single"
    (one candidate only, nothing to measure). ``timings`` maps each timed thread count to its
    median seconds (a candidate dropped early shows its one run).
    """

    threads: int
    source: str
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_FILE_CACHES: dict[str, ChoiceCache] = {}


def file_cache(name: str) -> ChoiceCache:
    """The process-wide cache of decisions kept in ``<cache dir>/<name>`` as well as in memory
    (it follows ``MODELLOOP_CACHE_DIR`` if that changes while the process runs)."""
    from .settings import cache_dir

    path = cache_dir() / name
    cache = _FILE_CACHES.get(name)
    if cache is None or cache.path != path:
        cache = _FILE_CACHES[name] = ChoiceCache(CACHE_TTL_S, path)
    return cache


def thread_cache() -> ChoiceCache:
    """The process-wide cache of thread decisions (``<cache dir>/threads.json``)."""
    return file_cache("threads.json")


def choose_threads(key: str, run: Callable[[int], None], candidates: list[int],
                   cache: ChoiceCache | None = None, rounds: int = PROBE_ROUNDS) -> ThreadChoice:
    """The fastest of ``candidates`` thread counts for ``run``, measured unless a fresh decision is cached.

    Args:
        key: what is decided for: the work's kind and shape bucket, and :func:`machine_key`.
        run: ``run(threads)`` does one representative unit of the work on that many threads.
        candidates: thread counts to compare (e.g. ``[1, available_cores()]``).
        cache: where decisions are kept; default :func:`thread_cache`.
        rounds: timed runs per candidate.

    Returns:
        The choice; the lowest median time wins.
    """
    options = sorted({int(c) for c in candidates if int(c) >= 1})
    if not options:
        raise ValueError(f"thread candidates: received {candidates!r}; expected positive integers")
    if len(options) == 1:
        return ThreadChoice(options[0], "single")
    cache = thread_cache() if cache is None else cache
    hit = cache.get(key)
    if isinstance(hit, dict) and hit.get("threads") in options:
        return ThreadChoice(int(hit["threads"]), "cache", dict(hit.get("timings", {})))

    def timed(threads: int) -> float:
        start = time.perf_counter()
        run(threads)
        return time.perf_counter() - start

    timings = {t: statistics.median(v) for t, v in time_interleaved(timed, options, rounds=rounds).items()}
    best = min(timings, key=timings.__getitem__)
    choice = ThreadChoice(best, "probe", {f"{t}t": round(s, 5) for t, s in timings.items()})
    cache.put(key, {"threads": best, "timings": choice.timings})
    log.info("threads for %s: %d (measured %s)", key, best, choice.timings)
    return choice
