"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, model_validator

#: a number as JSON carries it: finite, never a boolean or a numeric string
FiniteNumber = Annotated[StrictFloat, Field(allow_inf_nan=False)]


class PredictResponse(BaseModel):
    prediction_id: str = Field(description="Quote it in POST /feedback.")
    label: str
    scores: dict[str, float] = Field(description="Class probabilities.")
    model_version: str
    latency_ms: float


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    prediction_id: StrictStr = Field(min_length=1, max_length=64)
    kind: Literal["label", "thumbs", "rating", "click"] = Field("label", description=(
        "label: the correct class; thumbs: value +1 (right) or -1 (wrong); rating: value 1-5; click "
        "(recommendation): the user clicked the item named in label."))
    label: Annotated[StrictStr, Field(min_length=1, max_length=1000)] | StrictInt | FiniteNumber | None = Field(
        None, description=("The correct class name (kind label); an integer is read as its text. Regression "
                           "models: the true value, a finite number."))
    value: FiniteNumber | None = Field(None, description="thumbs: +1 or -1; rating: 1 to 5 (a finite number).")
    origin: Literal["user", "active", "audit"] = Field("user", description=(
        "Who chose this prediction: user (their own answer), or the origin GET /label/next gave the item "
        "(active: the queue's most informative; audit: its uniformly random sample)."))

    @model_validator(mode="after")
    def _consistent(self) -> FeedbackIn:
        if self.kind == "label" and self.label is None:
            raise ValueError("field 'label' is required for kind 'label'")
        if self.kind == "thumbs" and self.value not in (1, -1):
            raise ValueError(f"field 'value': received {self.value!r}; expected +1 or -1 for kind 'thumbs'")
        if self.kind == "rating" and (self.value is None or not 1 <= self.value <= 5):
            raise ValueError(f"field 'value': received {self.value!r}; expected 1 to 5 for kind 'rating'")
        return self


class FeedbackOut(BaseModel):
    feedback_id: int
    prediction_id: str
    kind: str = "label"
    label: str
    value: float | None = None
    origin: str = "user"


class AdminPromoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(min_length=2, max_length=32, description="e.g. v2")


class ShadowIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str | None = Field(None, description="Version to shadow; null stops shadowing.")
