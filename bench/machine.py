"""What machine a benchmark ran on: every table names it beside the load average.

Used by the bench scripts (``from machine import describe``; each script puts its own folder on
``sys.path`` first, so it also works when a test loads the script by path).
"""

from __future__ import annotations

import os
from pathlib import Path

from modelloop.hardware import cpu_model  # the name the caches key their measurements by

__all__ = ["cpu_model", "cpu_flags", "describe", "load"]

_FLAGS = {"avx512f": "AVX-512", "avx512_bf16": "AVX-512 BF16", "amx_tile": "AMX"}


def _cpuinfo() -> dict[str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    first = text.split("\n\n", 1)[0]  # the first core describes them all
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines())}


def cpu_flags() -> dict[str, bool]:
    """The features that change these benchmarks: AVX-512, AVX-512 BF16, AMX."""
    flags = set(_cpuinfo().get("flags", "").split())
    return {name: key in flags for key, name in _FLAGS.items()}


def describe() -> str:
    """One line: model, the relevant flags, usable cores."""
    flags = ", ".join(f"{name} {'yes' if on else 'no'}" for name, on in cpu_flags().items())
    return f"{cpu_model()} ({flags}; {len(os.sched_getaffinity(0))} cores)"


def load() -> str:
    """The 1/5/15-minute load averages."""
    return "/".join(f"{x:.2f}" for x in os.getloadavg())
