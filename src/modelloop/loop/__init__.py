"""The loop: run, retrain, promote, roll back, monitor, watch and lineage on a project folder.

``core`` holds :class:`Loop`, which ties the stages together; ``run`` (run and retrain),
``monitor`` (monitoring, shadow mode, the retraining policy) and ``lineage`` are the stages;
``state`` keeps the run records they share.
"""

from .core import Loop, Progress
from .state import Runs, RunState

__all__ = ["Loop", "Progress", "RunState", "Runs"]
