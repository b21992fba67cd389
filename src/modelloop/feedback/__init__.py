"""User feedback: the prediction log, the feedback store, and feedback turned into training data."""

from .store import FeedbackStore, open_store

__all__ = ["FeedbackStore", "open_store"]
