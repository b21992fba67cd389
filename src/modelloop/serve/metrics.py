"""Prometheus metrics of one app, plus the recent-latency window the web UI shows."""

from __future__ import annotations

import time
from collections import deque

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

__all__ = ["ServerMetrics", "ENDPOINTS"]

disable_created_metrics()  # the *_created series only add noise to every scrape

#: the shared routes' labels; a server adds its task's own routes (``ServerMetrics.add_endpoints``)
ENDPOINTS = ("/predict", "/feedback", "/label", "/models", "/health", "/ready", "/metrics", "/stats", "/info",
             "/admin", "/ui",
             "/docs", "/", "/openapi.json")
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5,
                    1.0, 2.5, 5.0)


def endpoint_of(path: str, endpoints: tuple[str, ...] = ENDPOINTS) -> str:
    """A bounded label for a request path (never the raw path: no label explosion)."""
    if path in ("/", "/openapi.json"):
        return path
    for e in endpoints:
        if e != "/" and path.startswith(e) and (len(path) == len(e) or path[len(e)] == "/"):
            return e
    return "other"


class ServerMetrics:
    #: the routes requests are counted by (the shared ones and the task's own)
    endpoints: tuple[str, ...] = ENDPOINTS

    def add_endpoints(self, paths) -> None:
        """Count requests to these paths (a task's own routes, e.g. ``/answer``) by their own label."""
        self.endpoints = tuple(dict.fromkeys([*self.endpoints, *paths]))

    def endpoint_of(self, path: str) -> str:
        return endpoint_of(path, self.endpoints)

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("modelloop_requests_total", "HTTP requests by endpoint, method and status.",
                                ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram("modelloop_request_duration_seconds", "Time to answer a request.", ["endpoint"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("modelloop_batch_size", "Inputs per forward pass.",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=r)
        self.batch_seconds = Histogram("modelloop_batch_duration_seconds", "Time of one forward pass.",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.predictions = Counter("modelloop_predictions_total", "Predictions served.", ["model_version"],
                                   registry=r)
        self.feedback = Counter("modelloop_feedback_total", "Feedback received.", registry=r)
        self.model_info = Gauge("modelloop_model_info", "The model being served (value 1).",
                                ["version", "backend"], registry=r)
        self.live_accuracy_audit = Gauge("modelloop_live_accuracy_audit", "Champion's live accuracy on the audit "
                                         "sample (uniformly random predictions labelled from the queue: "
                                         "unbiased), with its 95% Wilson interval.", ["version", "bound"], registry=r)
        self.live_accuracy = Gauge("modelloop_live_accuracy", "Champion's live accuracy on all feedback, with its "
                                   "Wilson interval: biased (users correct wrong answers more often than they "
                                   "confirm right ones); see modelloop_live_accuracy_audit.", ["version", "bound"],
                                   registry=r)
        self.audit_labels = Gauge("modelloop_audit_labels", "Audit-sample labels of the champion.", ["version"],
                                  registry=r)
        self.ood = Counter("modelloop_ood_total", "Predictions flagged out of the training distribution.",
                           ["model_version"], registry=r)
        self.drift = Gauge("modelloop_drift", "Input drift of the last monitor run (MMD² statistic, threshold, "
                           "detected 0/1).", ["quantity"], registry=r)
        self._recent = deque(maxlen=2000)  # (time, seconds) of recent predict/recommend requests
        self.started = time.time()

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, method, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)
        if endpoint in ("/predict", "/recommend"):
            self._recent.append((time.time(), seconds))

    def on_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def serving(self, version: str, backend: str) -> None:
        self.model_info.clear()
        self.model_info.labels(version, backend).set(1)

    def set_live_accuracy(self, version: str, stats: dict, audit: dict | None = None) -> None:
        """``stats``: the feedback figure (``FeedbackStore.feedback_stats``); ``audit``: the audit
        sample's (``feedback.labelling.audit_figure``)."""
        self.live_accuracy.clear()
        for bound, key in (("value", "live_accuracy"), ("low", "low"), ("high", "high")):
            if stats.get(key) is not None:
                self.live_accuracy.labels(version, bound).set(stats[key])
        self.live_accuracy_audit.clear()
        self.audit_labels.clear()
        if audit is not None and audit.get("measure") == "accuracy":
            self.audit_labels.labels(version).set(audit["n"])
            for bound in ("value", "low", "high"):
                if audit.get(bound) is not None:
                    self.live_accuracy_audit.labels(version, bound).set(audit[bound])

    def set_drift(self, drift: dict) -> None:
        if drift.get("statistic") is None:
            return
        self.drift.labels("statistic").set(drift["statistic"])
        self.drift.labels("threshold").set(drift["threshold"])
        self.drift.labels("detected").set(1.0 if drift["detected"] else 0.0)

    def recent_latency_ms(self) -> dict[str, float | None]:
        lat = [s for _, s in self._recent]
        if not lat:
            return {"p50_ms": None, "p95_ms": None}
        a = np.array(lat) * 1000
        return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95))}

    def total(self, endpoint: str) -> int:
        n = 0
        for metric in self.requests.collect():
            for s in metric.samples:
                if s.name.endswith("_total") and s.labels.get("endpoint") == endpoint:
                    n += int(s.value)
        return n

    def render(self) -> bytes:
        return generate_latest(self.registry)
