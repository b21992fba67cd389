"""modelloop: from raw data to a served model that keeps learning from its users."""

__version__ = "0.1.0"

from .errors import DataError, InputError, ModelloopError, NotFoundError, RegistryError, SpecError  # noqa: E402
from .loop import Loop  # noqa: E402
from .project import Project  # noqa: E402
from .spec import Requirements, Spec, load_spec  # noqa: E402

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
