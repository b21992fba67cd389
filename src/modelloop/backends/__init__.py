"""Where fits and searches run: :class:`LocalBackend` runs them in this process.

Every candidate fit goes through :meth:`Backend.fit` and every search's trials through
:meth:`Backend.search`; :func:`get_backend` picks the backend.
"""

from __future__ import annotations

from typing import Any

from ..errors import SpecError
from .base import Backend, FitJob, FitResult, SearchJob, SearchOutcome, TrialRecord, task_score
from .local import LocalBackend

__all__ = ["Backend", "LocalBackend", "get_backend", "BACKENDS", "FitJob", "FitResult", "SearchJob",
           "SearchOutcome", "TrialRecord", "task_score"]

#: backend name -> class
BACKENDS: dict[str, type[Backend]] = {LocalBackend.name: LocalBackend}


def get_backend(spec_or_name: Any = None) -> Backend:
    """The backend to fit and search with.

    Args:
        spec_or_name: a backend name, a ``Spec`` (its ``backend`` field when it has one), a
            :class:`Backend` (returned as is), or None: the local backend.

    Raises:
        SpecError: the name is not a known backend (the message names the field and the known names).
    """
    if isinstance(spec_or_name, Backend):
        return spec_or_name
    name = spec_or_name if isinstance(spec_or_name, str) or spec_or_name is None else \
        getattr(spec_or_name, "backend", None)
    name = "local" if name is None else name
    if not isinstance(name, str) or name not in BACKENDS:
        raise SpecError(f"backend: received {name!r}; expected one of {', '.join(repr(n) for n in BACKENDS)}")
    return BACKENDS[name]()
