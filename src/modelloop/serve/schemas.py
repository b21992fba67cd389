"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PredictResponse(BaseModel):
    prediction_id: str = Field(description="Quote it in POST /feedback.")
    label: str
    scores: dict[str, float] = Field(description="Class probabilities.")
    model_version: str
    latency_ms: float


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prediction_id: str = Field(min_length=1, max_length=64)
    label: str | int = Field(description="The correct class name (an integer is read as its text).")


class FeedbackOut(BaseModel):
    feedback_id: int
    prediction_id: str
    label: str


class AdminPromoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(min_length=2, max_length=32, description="e.g. v2")
