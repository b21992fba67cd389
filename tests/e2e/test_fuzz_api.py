"""Property-based fuzzing of the HTTP API from its own OpenAPI document, against a real server of every task.

schemathesis turns each operation of ``/openapi.json`` into a hypothesis strategy of requests:
requests that fit the documented schemas (positive: /predict's body is described as the served
model takes it, so many reach the model) and requests that break them (negative). Every case goes
to a real ``modelloop serve`` process on loopback over the cheapest trained project of the task
(``tests/e2e/tiny_projects.py``), with the admin key (which passes every route's check). The run
is seeded (derandomized) and bounded: at most ``EXAMPLES`` cases per operation and server.

The rules: no 5xx, ever, except a 503 the operation documents (a route that legitimately cannot
answer, such as /ready before a model is loaded); and a JSON body to /predict that fits the
documented schema is answered 200 (the document describes what the served model takes).
"""

from __future__ import annotations

import collections

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.e2e.tiny_projects import TASKS

pytestmark = pytest.mark.slow

EXAMPLES = 50  # per operation: half that fit the documented schemas, half that break them
#: started jobs train a model in the background: called by their own tests, not fuzzed
NOT_FUZZED = ("/admin/retrain", "/admin/watch")


def _real_prediction(client: httpx.Client, task: str) -> tuple[str, str]:
    """One answered prediction, made with a known-good request: its id and a label feedback may
    give it (the feedback cases use them to reach the checks behind the id lookup)."""
    if task == "recommendation":
        r = client.get("/recommend", params={"user": "1", "k": 5})
        assert r.status_code == 200, r.text
        return r.json()["prediction_id"], r.json()["items"][0]["item"]
    else:
        info = client.get("/info").json()
        body = {"image-classification": lambda: {"pixels": [0] * 64},
                "text-classification": lambda: {"text": "a fine film"},
                "audio-classification": lambda: {"samples": [0.0] * 1600, "sample_rate": 16000}}.get(
            task, lambda: {"row": {c: (1.0 if c in info["numeric"] else "high") for c in info["columns"]}})()
        r = client.post("/predict", json=body)
    assert r.status_code == 200, r.text
    return r.json()["prediction_id"], "12.5" if task == "tabular-regression" else info["class_names"][0]


@pytest.mark.parametrize("task", TASKS)
def test_no_server_errors_on_any_documented_operation(task, tmp_path, serve, tiny_project):
    project = tiny_project(task, tmp_path / "proj")
    server = serve(project)
    doc = server.client.get("/openapi.json").json()
    pid, good_label = _real_prediction(server.client, task)
    auth = server.auth("admin")
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")

    cases: collections.Counter[str] = collections.Counter()
    statuses: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    errors: list[tuple[str, int, str, object]] = []
    session = requests.Session()

    def fuzz(op, mode: GenerationMode) -> None:
        """Up to EXAMPLES / 2 seeded cases of one operation in one mode, each sent and counted."""
        label = f"{op.method.upper()} {op.path}"
        documented = {str(k) for k in doc["paths"][op.path][op.method.lower()].get("responses", {})}

        @settings(max_examples=EXAMPLES // 2, derandomize=True, database=None, deadline=None,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy(mode), steer=st.sampled_from(["as generated", "real id", "real id and label"]))
        def one(case, steer):
            if steer != "as generated" and op.path == "/feedback" and isinstance(case.body, dict):
                # Reach the checks behind the id lookup (and, with a label the model knows, the store).
                case.body = {**case.body, "prediction_id": pid}
                if steer == "real id and label":
                    case.body["label"] = good_label
            if steer != "as generated" and op.path in ("/recommend", "/similar"):
                # k is documented as a string: a valid one (and a known user or item) reaches the model
                case.query = {**(case.query or {}), "k": "5"}
                if steer == "real id and label":
                    case.query["user" if op.path == "/recommend" else "item"] = (
                        "1" if op.path == "/recommend" else good_label)
            r = case.call(base_url=server.url, session=session, headers=auth, timeout=60)
            cases[label] += 1
            statuses[label][r.status_code] += 1
            shown = {"query": case.query, "body": str(case.body)[:300], "media_type": case.media_type}
            if r.status_code >= 500 and not (r.status_code == 503 and "503" in documented):
                errors.append((label, r.status_code, r.text[:300], shown))
            if (mode is GenerationMode.POSITIVE and label == "POST /predict" and task != "recommendation"
                    and case.media_type == "application/json" and r.status_code != 200):
                refused.append((r.status_code, r.text[:300], shown))  # documented as valid, yet refused

        try:
            one()
        except Unsatisfiable:  # no parameters and no body: there is no request that breaks the schema
            assert mode is GenerationMode.NEGATIVE, label

    refused: list[tuple[int, str, object]] = []
    for result in schema.get_all_operations():
        if result.ok().path not in NOT_FUZZED:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                fuzz(result.ok(), mode)
    session.close()

    print(f"\n{task}: {sum(cases.values())} cases")
    for label in sorted(cases):
        print(f"  {label:28s} {cases[label]:4d}  {dict(sorted(statuses[label].items()))}")
    assert not errors, errors[:5]
    assert not refused, refused[:5]  # the OpenAPI document describes what /predict takes
    served = "GET /recommend" if task == "recommendation" else "POST /predict"
    assert cases[served] >= EXAMPLES // 2 and statuses[served][200] > 0, statuses[served]  # schemas reach the model
    assert statuses["POST /feedback"][201] > 0 or task == "recommendation", statuses["POST /feedback"]
    assert server.client.get("/health").status_code == 200
