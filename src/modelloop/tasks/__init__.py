"""Task plugins: what differs between domains (data, candidates, inputs); see ``base.Task``."""

from . import audio_features, tabular_features  # noqa: F401  (their featurizers register themselves)
from .base import TASK_NAMES, Candidate, Task, check_spec, get_task
from .features import Featurizer, featurizer_from_config

__all__ = ["TASK_NAMES", "Candidate", "Task", "get_task", "check_spec", "Featurizer", "featurizer_from_config"]
