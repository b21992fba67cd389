"""The server's routes, one module per concern; each builds an ``APIRouter`` from the app's
:class:`~modelloop.serve.deps.ServeContext`.

- :mod:`.predict`: ``POST /predict``
- :mod:`.feedback`: ``POST /feedback``
- :mod:`.status`: ``/health``, ``/ready``, ``/models``, ``/info``, ``/metrics``, ``/stats``
- :mod:`.admin`: ``/admin/*`` (admin key)
- :mod:`.ui`: the web UI (``/`` and the static files under ``/ui``)

A task adds routes of its own through ``Task.routes(ctx)`` (recommendation: ``/recommend``,
``/similar``).
"""

from . import admin, feedback, predict, status, ui

__all__ = ["admin", "feedback", "predict", "status", "ui"]
