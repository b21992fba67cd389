"""Product integration: self-describing model artifacts and a registry of versions with aliases."""

from .artifact import LoadedModel, load_artifact, write_artifact
from .lock import ProjectLock
from .store import LocalRegistry, open_registry

__all__ = ["LoadedModel", "load_artifact", "write_artifact", "LocalRegistry", "open_registry", "ProjectLock"]
