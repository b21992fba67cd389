"""Errors raised by modelloop.

Every message says where the bad value came from (file, field or request part), what was
received and what was expected, so a person can fix it without reading a traceback. The CLI
turns any :class:`ModelloopError` into a one-line message and exit code 2; the server turns it
into an HTTP error with the same message.
"""

from __future__ import annotations

__all__ = [
    "ModelloopError",
    "SpecError",
    "DataError",
    "RegistryError",
    "InputError",
    "NotFoundError",
    "StoreError",
    "StoreUnavailableError",
    "BusyError",
]


class ModelloopError(Exception):
    """Base class: bad input or usage. The CLI exits with code 2 on these."""

    exit_code = 2
    http_status = 400


class SpecError(ModelloopError):
    """The project spec (modelloop.yaml) is missing, malformed or has an invalid field."""


class DataError(ModelloopError):
    """A data source is missing, empty, unreadable or too small to train on."""


class RegistryError(ModelloopError):
    """The model registry has no such version, or an artifact is incomplete."""

    http_status = 404


class InputError(ModelloopError):
    """A prediction or feedback input has the wrong shape, type or value."""

    http_status = 422


class NotFoundError(ModelloopError):
    """A referenced record (e.g. a prediction id) does not exist."""

    http_status = 404


class StoreError(ModelloopError):
    """The feedback store cannot be opened or has an unsupported URL or schema."""


class StoreUnavailableError(StoreError):
    """The feedback store cannot be reached right now (a restart, an outage, a lock held too long).

    The server answers 503 with ``Retry-After``; nothing is stored, so the caller may send again.
    """

    http_status = 503
    retry_after_s = 5


class BusyError(ModelloopError):
    """Another process holds the project's writer lock (a run, retrain or registry change)."""

    http_status = 409
