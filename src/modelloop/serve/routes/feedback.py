"""``POST /feedback``: the correct label (or a thumbs, a rating, a click) for a served prediction.

The task checks the label against what the version that answered knows
(``Task.check_feedback``: a class, a value, a catalogue item) and says what the store keeps.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from ...errors import NotFoundError, StoreUnavailableError
from ..deps import ServeContext
from ..schemas import FeedbackIn, FeedbackOut
from .responses import ERRORS, LIMITED, STORE_DOWN

__all__ = ["router"]


def router(ctx: ServeContext) -> APIRouter:
    r = APIRouter()

    @r.post("/feedback", response_model=FeedbackOut, status_code=201,
            responses={404: {"description": "No such prediction.", "content": ERRORS}, **STORE_DOWN, **LIMITED})
    def feedback(body: FeedbackIn, request: Request) -> FeedbackOut:
        """Give the correct label for a prediction (client key). Unknown ``prediction_id``: 404;
        a label the model does not know: 422."""
        ctx.keys.require(request, "client")
        ctx.writer.flush()  # spooled predictions are in the store before we look (503 while it is down)
        try:
            pred = ctx.store.get_prediction(body.prediction_id)
        except NotFoundError:
            if ctx.writer.spooled_elsewhere():  # perhaps answered by another server process during an outage
                raise StoreUnavailableError(
                    f"field 'prediction_id': received {body.prediction_id[:100]!r}, not in the feedback store yet; "
                    "another server process of this project is still replaying predictions it spooled while the "
                    f"store was down: expected to find it there, retry in {StoreUnavailableError.retry_after_s} s"
                ) from None
            raise
        label = ctx.task.check_feedback(body.label, pred["label"], pred["model_version"], ctx)
        fid = ctx.store.add_feedback(body.prediction_id, label, client=ctx.client_of(request),
                                     kind=body.kind, value=body.value, origin=body.origin)
        ctx.metrics.feedback.inc()
        return FeedbackOut(feedback_id=fid, prediction_id=body.prediction_id, kind=body.kind, label=label,
                           value=body.value, origin=body.origin)

    return r
