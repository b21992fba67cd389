"""User feedback: the prediction log, the feedback store, and feedback turned into training data."""

from .store import FeedbackStore, open_store
from .writer import PredictionWriter, prediction_row

__all__ = ["FeedbackStore", "open_store", "PredictionWriter", "prediction_row"]
