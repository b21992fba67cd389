"""modelloop: from raw data to a served model that keeps learning from its users."""

__version__ = "0.1.0"

from typing import TYPE_CHECKING  # noqa: E402

from .errors import DataError, InputError, ModelloopError, NotFoundError, RegistryError, SpecError  # noqa: E402
from .spec import Requirements, Spec, load_spec  # noqa: E402

if TYPE_CHECKING:
    from .loop import Loop
    from .project import Project

# Imported on first use (PEP 562): they bring in PyTorch, which a command such as
# `modelloop --help` or `modelloop keys` does not need.
_LAZY = {"Loop": ".loop", "Project": ".project"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'modelloop' has no attribute {name!r}")


__all__ = [
    "__version__",
    "Project",
    "Loop",
    "Spec",
    "Requirements",
    "load_spec",
    "ModelloopError",
    "SpecError",
    "DataError",
    "InputError",
    "NotFoundError",
    "RegistryError",
]
