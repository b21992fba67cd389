"""Where fits and searches run: :class:`LocalBackend` runs them in this process,
:class:`RayBackend` on a Ray cluster (``pip install 'modelloop[ray]'``).

Every candidate fit goes through :meth:`Backend.fit` and every search's trials through
:meth:`Backend.search`; :func:`get_backend` picks the backend from the spec's ``compute`` section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import SpecError
from .base import Backend, FitJob, FitResult, SearchJob, SearchOutcome, TrialRecord, task_score
from .local import LocalBackend
from .ray import BackendError, RayBackend

__all__ = ["Backend", "LocalBackend", "RayBackend", "BackendError", "get_backend", "BACKENDS", "FitJob",
           "FitResult", "SearchJob", "SearchOutcome", "TrialRecord", "task_score"]

#: backend name -> class
BACKENDS: dict[str, type[Backend]] = {LocalBackend.name: LocalBackend, RayBackend.name: RayBackend}


def get_backend(spec_or_name: Any = None, storage: str | Path | None = None) -> Backend:
    """The backend to fit and search with.

    Args:
        spec_or_name: a backend name, a ``Spec`` (its ``compute`` section), a :class:`Backend`
            (returned as is), or None: the local backend.
        storage: where a distributed backend keeps checkpoints and trial results when the spec's
            ``compute.storage`` does not say (a project keeps them in ``.modelloop/ray``).

    Raises:
        SpecError: the name is not a known backend (the message names the field and the known names).
        BackendError: the backend cannot run here (Ray asked for but not installed).
    """
    if isinstance(spec_or_name, Backend):
        return spec_or_name
    compute = getattr(spec_or_name, "compute", None)
    name = spec_or_name if isinstance(spec_or_name, str) or spec_or_name is None else \
        getattr(compute, "backend", None)
    name = "local" if name is None else name
    if not isinstance(name, str) or name not in BACKENDS:
        raise SpecError(f"compute.backend: received {name!r}; expected one of "
                        f"{', '.join(repr(n) for n in BACKENDS)}")
    if name == RayBackend.name:
        return RayBackend(compute, storage)
    return BACKENDS[name]()
