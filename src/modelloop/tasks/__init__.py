"""Task plugins: what differs between domains (data, candidates, inputs); see ``base.Task``."""

from . import audio_features, tabular_features  # noqa: F401  (their featurizers register themselves)
from .base import ENTRY_POINT_GROUP, TASK_NAMES, Candidate, Task, check_spec, get_task, register_task, task_names
from .features import Featurizer, featurizer_from_config

__all__ = ["TASK_NAMES", "ENTRY_POINT_GROUP", "Candidate", "Task", "get_task", "register_task", "task_names",
           "check_spec", "Featurizer", "featurizer_from_config"]
