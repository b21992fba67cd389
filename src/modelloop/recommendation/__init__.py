"""The recommendation task through the whole loop: run, serve, feedback, retrain, gate.

- :mod:`.config`: the ``recommendation:`` section of ``modelloop.yaml`` (columns, item texts,
  candidates) and the candidate names, from :mod:`modelloop.spec` and
  :mod:`modelloop.tasks.recommendation`.
- :mod:`.core`: data loading and the per-user split, candidate selection, evaluation, the
  registry artifact, retraining on feedback, ``models`` and ``monitor``.
- :mod:`.gate`: champion vs challenger on per-user NDCG@10 and on held-out feedback.
- :mod:`.serve`: ``GET /recommend``, ``GET /similar`` and recommendation feedback over HTTP.
- :mod:`.demo`: the loop with simulated users.
"""
