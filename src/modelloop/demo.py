"""The whole loop with nobody at the keyboard, on the founding case or on one example per task.

init -> run -> serve on a free loopback port -> rounds (two by default) of: simulated users send
live traffic (examples the project never trained or tested on) over HTTP and give feedback on part
of it, a labeller labels items from the labelling queue -> retrain -> gate -> promote or reject.
The traffic pool is cut into disjoint chunks, one per round, and a held-out slice no version is
sent or trained on, on which every version is measured at the end (:func:`plan_traffic`).

Each task's case (:data:`DEMO_CASES`) supplies only its data, its traffic and the request body of
one example; :func:`run_demo` runs the same loop for all of them:

- ``image-classification`` (the founding case): ``builtin:seed-case``; traffic: the 3,900 digits
  in neither its training nor its test split.
- ``text-classification``: 2,000 ``builtin:rotten-tomatoes`` snippets written to ``DIR/data/reviews.csv``;
  traffic: the other snippets.
- ``audio-classification``: 8 spoken keywords synthesized by :mod:`modelloop.data.keywords`;
  training clips in ``DIR/data/keywords/train`` (3 voices), traffic in ``DIR/data/keywords/traffic``
  (5 other voices, other speeds and pitches).
- ``tabular-classification``: ``builtin:breast-cancer`` split class-stratified: 70% of the rows
  written to ``DIR/data/cells.csv``, the other 30% are traffic.
- ``tabular-regression``: ``builtin:diabetes`` (disease progression after a year): 70% of the
  patients written to ``DIR/data/patients.csv``, the other 30% are traffic; users report the
  measured value for 60% of the predictions (the outcome, once known), whatever the error.
- ``recommendation``: MovieLens-100k split in time per user (see :func:`run_recommendation_demo`);
  users ask ``GET /recommend`` and click what they went on to watch: a case with its own users.
- ``faq``: the built-in help desk (see :func:`run_faq_demo`): customers ask ``POST /answer``,
  say when it helped, agents correct the rest; half the questions are held back and measured
  before and after learning.
"""

from __future__ import annotations

import csv
import logging
import shutil
import socket
import threading
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn

from .data.builtin import seed_case_traffic
from .errors import InputError, ModelloopError
from .feedback.labelling import audit_figure
from .loop import Progress
from .project import Project
from .serve import create_app
from .serve.security import keys_for
from .spec import SPEC_FILE

__all__ = ["run_demo", "run_recommendation_demo", "run_faq_demo", "free_port", "BackgroundServer", "DEMO_CASES",
           "DemoCase", "client_headers", "Traffic", "plan_traffic", "measure_held_out", "show_figure"]

log = logging.getLogger(__name__)

_DATA_SEED = 20240611


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def client_headers(project: Project) -> dict[str, str]:
    """The Authorization header of the project's client key (its admin key when it has none)."""
    keys, _ = keys_for(project.loop.spec.serving.keys, project.loop.paths.state / "keys.json")
    return {"Authorization": f"Bearer {(keys['client'] or keys['admin'])[0]}"}


class BackgroundServer:
    """uvicorn serving an app in a thread of this process; a context manager."""

    def __init__(self, app, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host, self.port = host, port or free_port(host)
        self.server = uvicorn.Server(uvicorn.Config(app, host=self.host, port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise ModelloopError(f"server on {self.url} did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@dataclass
class Traffic:
    """Live examples: ``labels[i]`` is the true class name of example i, ``body(i)`` its /predict JSON."""

    labels: list[str]
    body: Callable[[int], dict[str, Any]]


@dataclass
class DemoCase:
    """One task's demo: where its data comes from, what is required, and what users send."""

    task: str
    title: str  # the summary table's title
    target: float  # accuracy the first version must reach on the test split
    noun: str  # what users send ("images", "reviews", ...)
    # Writes whatever data the project needs into DIR (a new folder) and returns
    # (init keyword arguments: data, name and any column names; the traffic).
    prepare: Callable[[Path], tuple[dict[str, Any], Traffic]] | None = None
    metric: str = "accuracy"  # the requirement's metric, as the summary names it
    metric_key: str = "accuracy"  # its key in the test metrics
    numeric: bool = False  # users send back the measured value (a number), not a class
    # A case with simulated users of its own (not /predict): run(DIR, traffic=, seed=, progress=) -> summary
    run: Callable[..., dict[str, Any]] | None = None


def _image_case(directory: Path) -> tuple[dict[str, Any], Traffic]:
    x, y = seed_case_traffic()
    names = ["even", "odd"]
    return ({"data": "builtin:seed-case", "name": "seed-case"},
            Traffic([names[int(c)] for c in y], lambda i: {"pixels": x[i].reshape(-1).tolist()}))


def _split(labels: list[str], keep: int | float, seed: int = _DATA_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Class-stratified (train, traffic) row indices: ``keep`` rows (or that share) for training."""
    rng = np.random.default_rng(seed)
    y = np.asarray(labels)
    share = keep / len(y) if isinstance(keep, int) else keep
    train = []
    for c in sorted(set(labels)):
        idx = rng.permutation(np.flatnonzero(y == c))
        train.append(idx[: round(len(idx) * share)])
    train_idx = np.sort(np.concatenate(train))
    return train_idx, np.setdiff1d(np.arange(len(y)), train_idx)


def _text_case(directory: Path) -> tuple[dict[str, Any], Traffic]:
    from .data.text import load_rotten_tomatoes

    table = load_rotten_tomatoes()
    train, rest = _split(table.labels, 2000)
    path = directory / "data" / "reviews.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows([table.texts[i], table.labels[i]] for i in train)
    texts = [table.texts[i] for i in rest]
    return ({"data": str(path), "name": "reviews"},
            Traffic([table.labels[i] for i in rest], lambda i: {"text": texts[i]}))


_WORDS = ["yes", "no", "up", "down", "left", "right", "on", "off"]
_TRAIN_VOICES = {"voices": ["en-us", "en+m7", "en-us+f3"], "speeds": [140, 175, 210], "pitches": [35, 50, 65]}
_TRAFFIC_VOICES = {"voices": ["en-gb", "en+f2", "en-us+m3", "en-gb-scotland", "en-029"], "speeds": [150, 160, 195],
                   "pitches": [42, 58]}


def _read_wav(path: Path) -> list[float]:
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ModelloopError(f"{path}: expected 16-bit mono WAV from 'modelloop data keywords'")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return (pcm.astype(np.float32) / 32768.0).round(5).tolist()


def _audio_case(directory: Path) -> tuple[dict[str, Any], Traffic]:
    from .data.audio import SAMPLE_RATE
    from .data.keywords import make_keywords

    root = directory / "data" / "keywords"
    for part in ("train", "traffic"):
        if (root / part).exists():
            shutil.rmtree(root / part)
    make_keywords(root / "train", _WORDS, **_TRAIN_VOICES)
    make_keywords(root / "traffic", _WORDS, **_TRAFFIC_VOICES)
    clips = sorted((root / "traffic").glob("*/*.wav"))
    return ({"data": str(root / "train"), "name": "keywords"},
            Traffic([p.parent.name for p in clips],
                    lambda i: {"samples": _read_wav(clips[i]), "sample_rate": SAMPLE_RATE}))


def _write_table(path: Path, table, rows, target: str) -> Path:
    """The table's ``rows`` (indices) as a CSV with the target in column ``target``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = table.columns
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([*columns, target])
        w.writerows([*(table.rows[i][c] for c in columns), table.labels[i]] for i in rows)
    return path


def _tabular_case(directory: Path) -> tuple[dict[str, Any], Traffic]:
    from .data.tabular import load_tabular_builtin

    table = load_tabular_builtin("breast-cancer")
    train, rest = _split(table.labels, 0.7)
    path = _write_table(directory / "data" / "cells.csv", table, train, "label")
    return ({"data": str(path), "name": "cells"},
            Traffic([table.labels[i] for i in rest], lambda i: {"row": table.rows[rest[i]]}))


def _regression_case(directory: Path) -> tuple[dict[str, Any], Traffic]:
    from .data.tabular import load_tabular_builtin

    table = load_tabular_builtin("diabetes", numeric_target=True)
    order = np.random.default_rng(_DATA_SEED).permutation(len(table.rows))
    cut = round(0.7 * len(order))
    train, rest = np.sort(order[:cut]), np.sort(order[cut:])
    path = _write_table(directory / "data" / "patients.csv", table, train, "progression")
    return ({"data": str(path), "name": "patients", "label_column": "progression"},
            Traffic([table.labels[i] for i in rest], lambda i: {"row": table.rows[rest[i]]}))


RECOMMENDATION_DEMO_CANDIDATES = ["popularity", "ease", {"kind": "bpr", "epochs": 20},
                                  {"kind": "two-tower", "epochs": 5}]
#: share of each user's ratings (the latest) kept out of the project as the future users click on
FUTURE_SHARE = 0.15


def write_movielens_past(directory: Path) -> tuple[Path, Path, dict[str, set[str]]]:
    """MovieLens-100k split in time per user -> (ratings CSV of the past, movies CSV, future items per user)."""
    from .data.interactions import load_movielens_100k

    data = load_movielens_100k()
    f = data.frame.sort_values(["user", "timestamp", "item"], kind="stable")
    rank = f.groupby("user").cumcount()
    size = f.groupby("user")["item"].transform("size")
    future = rank >= (size * (1 - FUTURE_SHARE)).round().astype(int)
    folder = directory / "data"
    folder.mkdir(parents=True, exist_ok=True)
    ratings, movies = folder / "ratings.csv", folder / "movies.csv"
    f.loc[~future, ["user", "item", "rating", "timestamp"]].to_csv(ratings, index=False)
    import pandas as pd

    pd.DataFrame({"item": list(data.item_text), "text": list(data.item_text.values())}).to_csv(movies, index=False)
    later: dict[str, set[str]] = {}
    for u, i in zip(f.loc[future, "user"], f.loc[future, "item"], strict=True):
        later.setdefault(str(u), set()).add(str(i))
    return ratings, movies, later


def _outcome(project: Project, first: dict[str, Any], second: dict[str, Any], served_after: str,
             t0: float) -> dict[str, Any]:
    """What every demo case's summary says of the loop's outcome: the project, the champion, the
    gate's decision and reasons, what the server answered with after the retrain, the reports and
    the time taken."""
    return {"project": str(project.path), "champion": project.loop.registry.champion(),
            "decision": second["decision"], "reasons": second["evidence"]["reasons"],
            "served_after_retrain": served_after, "reports": [first["report"], second["report"]],
            "seconds": round(time.perf_counter() - t0, 1)}


def run_recommendation_demo(directory: Path, traffic: int = 600, seed: int = 0, progress=None,
                            candidates: list | None = None, **init_options: Any) -> dict[str, Any]:
    """Recommendation's demo: MovieLens-100k split in time per user; each user's earliest 85% of
    ratings are the project's data (with the movie titles and genres), the latest 15% the future.
    Simulated users are the dataset's own: each asks ``GET /recommend`` and clicks the recommended
    movies it went on to rate in that future; a few new users (no history) get the popularity
    fallback. The clicks go to ``POST /feedback``, then the project retrains on them and the
    ranking gate decides on the same test split as the first version. Candidates are kept quick
    (popularity, EASE, BPR, a 5-epoch two-tower). Returns the summary."""
    directory = Path(directory)
    say = progress or (lambda m: log.info(m))
    t0 = time.perf_counter()
    directory.mkdir(parents=True, exist_ok=True)
    ratings, movies, held_out = write_movielens_past(directory)
    say(f"[demo] init {directory} on {ratings} (each user's earliest {1 - FUTURE_SHARE:.0%} of MovieLens-100k; "
        "NDCG@10 >= 0.05 required)")
    project = Project.init(directory, task="recommendation", data=str(ratings), name="movies",
                           candidates=candidates or RECOMMENDATION_DEMO_CANDIDATES, time_budget_s=600,
                           timestamp_column="timestamp",
                           items=str(movies), item_id_column="item", item_text_columns=["text"], **init_options)
    first = project.run(progress=progress)
    if not first["champion"]:
        raise ModelloopError(f"the first version {first['version']} did not meet the requirements "
                             f"(test NDCG@10 {first['metrics']['ndcg@10']:.4f}); nothing to serve")
    rng = np.random.default_rng(seed)
    users = sorted(held_out)
    pick = [users[j] for j in rng.permutation(len(users))[:max(1, min(traffic, len(users)))]]
    new_users = [f"new-user-{j}" for j in range(max(1, len(pick) // 50))]
    app = create_app(project.path)
    headers = client_headers(project)
    sent = clicks = 0
    lineage_of = None
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=30, headers=headers) as client:
        say(f"[demo] serving {first['version']} on {server.url}; {len(pick)} users and {len(new_users)} new users "
            "ask for 10 movies and click the ones they go on to watch")
        for u in [*pick, *new_users]:
            r = client.get("/recommend", params={"user": u, "k": 10})
            r.raise_for_status()
            rec = r.json()
            sent += 1
            for it in rec["items"]:
                if it["item"] in held_out.get(u, ()):
                    client.post("/feedback", json={"prediction_id": rec["prediction_id"], "kind": "click",
                                                   "label": it["item"]}).raise_for_status()
                    clicks += 1
                    lineage_of = lineage_of or rec["prediction_id"]
        say(f"[demo] {sent} requests, {clicks} clicks on recommended movies")
        second = project.retrain(progress=progress)
        served_after = client.get("/health").json()["model_version"]
    versions = [{"version": m["version"], "test_ndcg@10": m["ndcg@10"], "test_score": m["ndcg@10"],
                 "parent": m["parent"], "feedback_examples": m["feedback_examples"], "aliases": m["aliases"]}
                for m in project.models()]
    return {
        **_outcome(project, first, second, served_after, t0), "task": "recommendation", "versions": versions,
        "traffic": {"requests": sent, "new_users": len(new_users), "clicks": clicks, "feedback": clicks,
                    "click_through": clicks / max(sent, 1)},
        "title": "recommendation (MovieLens-100k)", "score_name": "test NDCG@10",
        "traffic_line": (f"{sent} recommendation requests ({len(new_users)} from new users, served by the popularity "
                         f"fallback), {clicks} clicks on recommended items"),
        "lineage": project.loop.lineage(prediction_id=lineage_of) if lineage_of else None,
    }


def faq_traffic(seed: int = _DATA_SEED) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The built-in help desk's customer questions in two halves, (question, entry id or
    ``__none__``) each: per entry (and of the out-of-scope questions) half are asked now, with
    feedback, and half are held back to measure before and after learning."""
    from .data.faq import builtin_faq_example

    _, ex = builtin_faq_example()
    rng = np.random.default_rng(seed)
    asked: list[tuple[str, str]] = []
    held: list[tuple[str, str]] = []
    for eid in dict.fromkeys(ex.ids):
        rows = [q for q, i in zip(ex.queries, ex.ids, strict=True) if i == eid]
        order = rng.permutation(len(rows))
        half = len(rows) // 2
        asked += [(rows[j], eid) for j in order[:half]]
        held += [(rows[j], eid) for j in order[half:]]
    asked = [asked[j] for j in rng.permutation(len(asked))]
    return asked, held


def measure_answers(retriever, questions: list[tuple[str, str]]) -> dict[str, Any]:
    """Top-1 accuracy of the in-scope ``questions`` (question, entry id) and what the retriever's
    threshold does: in-scope questions refused, out-of-scope (``__none__``) refused."""
    from .data.faq import NO_ANSWER

    res = retriever.answer([q for q, _ in questions], 1)
    inq = [(a, i) for a, (_, i) in zip(res, questions, strict=True) if i != NO_ANSWER]
    out = [a for a, (_, i) in zip(res, questions, strict=True) if i == NO_ANSWER]
    return {"top1": sum(a["answers"][0]["id"] == i for a, i in inq) / max(len(inq), 1),
            "in_scope": len(inq), "out_of_scope": len(out),
            "in_scope_refused": sum(a["abstained"] for a, _ in inq) / max(len(inq), 1),
            "out_of_scope_refused": sum(a["abstained"] for a in out) / max(len(out), 1) if out else None}


def run_faq_demo(directory: Path, traffic: int = 600, seed: int = 0, progress=None, fine_tune_epochs: int | None = None,
                 **init_options: Any) -> dict[str, Any]:
    """Customer service's demo on the built-in help desk (synthetic; ``builtin:faq-example``).

    The project starts from the FAQ alone: v1 is zero-shot MiniLM, unmeasured, and serves.
    Simulated customers ask half of the example questions (``traffic`` at most) over
    ``POST /answer``; one who is helped says so (thumbs up), and an agent corrects every wrong
    answer (the right entry, or "no entry answers it"), as a help desk's agents do when they take
    over. Then the project retrains on that feedback and the gate decides; the other half of the
    questions, never seen, is measured with v1 and with the champion after. Returns the summary."""
    from .data.faq import NO_ANSWER, write_faq_example
    from .tasks.faq import load_version

    directory = Path(directory)
    say = progress or (lambda m: log.info(m))
    t0 = time.perf_counter()
    directory.mkdir(parents=True, exist_ok=True)
    faq_file, _ = write_faq_example(directory / "data")
    say(f"[demo] init {directory} on {faq_file} (the FAQ alone: the first version is zero-shot)")
    project = Project.init(directory, task="faq", data=str(faq_file), name="helpdesk", **init_options)
    if fine_tune_epochs is not None:
        spec = project.loop.spec
        spec.faq.fine_tune_epochs = fine_tune_epochs
        from .spec import save_spec

        save_spec(spec, project.path)
        project = Project(directory)
    first = project.run(progress=progress)
    asked, held = faq_traffic(_DATA_SEED + seed)
    asked = asked[:max(1, traffic)]
    app = create_app(project.path)
    headers = client_headers(project)
    sent = helped = corrected = abstained = 0
    lineage_of = None
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=30, headers=headers) as client:
        say(f"[demo] serving {first['version']} on {server.url}; {len(asked)} customers ask a question")
        for question, truth in asked:
            r = client.post("/answer", json={"question": question, "k": 3})
            r.raise_for_status()
            res = r.json()
            sent += 1
            abstained += res["abstained"]
            served = NO_ANSWER if res["abstained"] else res["answers"][0]["id"]
            if served == truth:
                body = {"prediction_id": res["prediction_id"], "kind": "thumbs", "value": 1}
                helped += 1
            else:
                body = {"prediction_id": res["prediction_id"], "label": truth}
                corrected += 1
                lineage_of = lineage_of or res["prediction_id"]
            client.post("/feedback", json=body).raise_for_status()
        say(f"[demo] {sent} questions: {helped} helped, {corrected} corrected by an agent, {abstained} handed over")
        second = project.retrain(progress=progress)
        served_after = client.get("/health").json()["model_version"]
    registry = project.loop.registry
    before = measure_answers(load_version(registry, first["version"]).retriever, held)
    after = measure_answers(load_version(registry, registry.champion()).retriever, held)
    say(f"[demo] held-back questions ({before['in_scope']} in scope, {before['out_of_scope']} out of scope): top1 "
        f"{before['top1']:.3f} -> {after['top1']:.3f}; out-of-scope refused {before['out_of_scope_refused']:.2f} -> "
        f"{after['out_of_scope_refused']:.2f}; in-scope refused {before['in_scope_refused']:.2f} -> "
        f"{after['in_scope_refused']:.2f}")
    versions = [{"version": m["version"], "test_score": m.get("top1"), "parent": m["parent"],
                 "feedback_examples": m["feedback_examples"], "aliases": m["aliases"]} for m in project.models()]
    return {
        **_outcome(project, first, second, served_after, t0), "task": "faq", "versions": versions,
        "traffic": {"requests": sent, "helped": helped, "corrected": corrected, "abstained": abstained,
                    "feedback": helped + corrected},
        "held_back": {"before": before, "after": after, "first_version": first["version"],
                      "champion": registry.champion()},
        "title": "customer service (a synthetic help desk's FAQ)", "score_name": "test top1",
        "traffic_line": (f"{sent} questions ({helped} helped, {corrected} corrected by an agent, {abstained} handed "
                         f"over); held-back questions top1 {before['top1']:.3f} -> {after['top1']:.3f}"),
        "lineage": project.loop.lineage(prediction_id=lineage_of) if lineage_of else None,
    }


DEMO_CASES: dict[str, DemoCase] = {
    "image-classification": DemoCase("image-classification", "the founding case (even vs odd digits)", 0.95,
                                     "images", _image_case),
    "text-classification": DemoCase("text-classification", "text (Rotten Tomatoes reviews, fresh vs rotten)", 0.65,
                                    "reviews", _text_case),
    "audio-classification": DemoCase("audio-classification", "audio (8 spoken keywords, unseen voices as traffic)",
                                     0.9, "spoken keywords", _audio_case),
    "tabular-classification": DemoCase("tabular-classification", "tables (breast-cancer cells, malignant vs benign)",
                                       0.9, "table rows", _tabular_case),
    "tabular-regression": DemoCase("tabular-regression", "regression (diabetes progression, R²)", 0.3,
                                   "patient rows", _regression_case, metric="R²", metric_key="r2", numeric=True),
    "recommendation": DemoCase("recommendation", "recommendation (MovieLens-100k)", 0.05, "recommendation requests",
                               metric="NDCG@10", metric_key="ndcg@10", run=run_recommendation_demo),
    "faq": DemoCase("faq", "customer service (a synthetic help desk's FAQ)", 0.0, "questions", metric="top1",
                    metric_key="top1", run=run_faq_demo),
}


#: the most examples of a traffic pool kept back as the held-out live slice
HELD_OUT = 1000
#: items a labeller takes from the labelling queue (``GET /label/next``) each round
LABELS_PER_ROUND = 100
#: the share of those items drawn as the uniformly random audit sample (``feedback.audit_fraction``)
DEMO_AUDIT_FRACTION = 0.5
MAX_ROUNDS = 5


def plan_traffic(pool: int, rounds: int, per_round: int, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Disjoint slices of a traffic pool of ``pool`` examples (indices): the held-out live slice
    (``HELD_OUT`` examples at most, and at most a share ``1 / (rounds + 1)`` of the pool), never
    sent to the server, and one chunk per round of ``per_round`` examples at most (fewer when
    the pool is small), in the order users send them.

    Raises:
        InputError: the pool is too small for one held-out example and one per round.
    """
    held_n = min(HELD_OUT, pool // (rounds + 1))
    size = min(per_round, (pool - held_n) // rounds)
    if held_n < 1 or size < 1:
        raise InputError(f"option '--rounds': received {rounds}; a traffic pool of {pool} examples holds a held-out "
                         f"slice and one chunk per round only for at most {max(pool - 1, 0)} rounds")
    order = np.random.default_rng(seed).permutation(pool)
    held = np.sort(order[:held_n])
    chunks = [order[held_n + k * size: held_n + (k + 1) * size] for k in range(rounds)]
    return held, chunks


def _quality(predicted: list[Any], truth: list[Any], regression: bool) -> dict[str, Any]:
    """Accuracy with its 95% Wilson interval, or (regression) the RMSE with a 95% interval (the
    normal approximation on the mean squared error, as the audit figure has it)."""
    f = audit_figure([{"predicted": p, "label": t} for p, t in zip(predicted, truth, strict=True)], regression)
    out = {key: f[key] for key in ("measure", "value", "low", "high", "n")}
    if not regression:
        out["correct"] = f["agreed"]
    return out


def _batch(xs: list[Any]) -> Any:
    """Parsed single requests as one batch, as the server's micro-batcher joins them."""
    if isinstance(xs[0], list):  # texts
        return [t for x in xs for t in x]
    return np.concatenate(xs)


def measure_held_out(project: Project, version: str, live: Traffic, held: np.ndarray,
                     regression: bool) -> dict[str, Any]:
    """``version``'s quality on the held-out live slice ``held``: each example's request body read
    by the task as the server reads it, answered by the version as it is served, and nothing
    logged (so the slice never becomes feedback or a pseudo-label)."""
    task = project.loop.task
    model = task.serve_model(project.loop.registry, version)
    predicted: list[Any] = []
    for start in range(0, len(held), 256):
        part = held[start: start + 256]
        outputs = model.run(_batch([task.parse_json(live.body(int(i)), model)[0] for i in part]))
        for out in outputs:
            _, _, shown = task.read_output(model, out)
            predicted.append(shown["value"] if regression else shown["label"])
    return _quality(predicted, [live.labels[int(i)] for i in held], regression)


def _users_figure(project: Project, version: str, regression: bool) -> dict[str, Any]:
    """``version``'s live quality on what users chose to label (biased: they correct wrong
    answers more often than they confirm right ones)."""
    rows = project.loop.store.labelled(None, project.loop.spec.feedback.untrusted_clients, model_version=version,
                                       thumbs_down_disagrees=True, origins=["user"])
    return {**_quality([r["predicted"] if not regression else float(r["predicted"]) for r in rows],
                       [r["label"] if not regression else float(r["label"]) for r in rows], regression),
            "biased": True}


def _trained_on(manifest: dict[str, Any]) -> str:
    """How a version was trained, from its manifest: the labelled data, feedback, pseudo-labels."""
    parts = ["labelled"]
    if manifest.get("feedback_examples"):
        parts.append("feedback")
    if (manifest.get("semi_supervised") or {}).get("used"):
        parts.append("pseudo-labels")
    return " + ".join(parts)


def _demo_spec(project: Project, pseudo_labels: bool) -> Project:
    """The demo's feedback settings: half of what the labelling queue hands out is the random
    audit sample (a usable unbiased figure from one short labelling session each round), and,
    with ``pseudo_labels``, a task that learns from pseudo-labels only when asked (image
    classification) is asked, with one unlabelled input per labelled one in each batch.

    Pseudo-labels are the first round's alone: on two cores a retrain with them ran 2.3 times
    fewer examples a second than one without (3.3 times with the default two unlabelled inputs per
    labelled one), so the later rounds retrain on feedback and keep the demo to a few minutes."""
    from .spec import save_spec

    spec = project.loop.spec
    spec.feedback.audit_fraction = DEMO_AUDIT_FRACTION
    if project.loop.task.semi_supervised == "on":
        spec.feedback.semi_supervised = "on" if pseudo_labels else "off"
        spec.feedback.unlabelled_ratio = 1
    save_spec(spec, project.path)
    if project.loop._store is not None:  # the replaced project's connections (the server has its own)
        project.loop._store.close()
    return Project(project.path)


def run_demo(directory: str | Path, fresh: bool = False, traffic: int = 600, seed: int = 0,
             progress: Progress | None = None, task: str = "image-classification", rounds: int = 2) -> dict[str, Any]:
    """Run the loop on ``task``'s demo case in ``directory``. Returns the summary (versions, rounds, ...).

    The first version is trained on the case's labelled data and served; then each of ``rounds``
    rounds: simulated users send a chunk of the traffic pool (``traffic`` requests at most) and
    give feedback on part of it, a labeller labels ``LABELS_PER_ROUND`` items from the labelling
    queue (half of them the random audit sample), and the project retrains and the gate decides
    (the first round's retrain also learns from pseudo-labels where the task can, see
    :func:`_demo_spec`).
    Every chunk is new to every version; a held-out slice of the pool is never sent, never
    labelled and never trained on: each version is measured on it at the end, the same examples
    for all. Recommendation and customer service run one round of their own (see their functions).

    Simulated users are truthful and behave as people do: nearly everyone whose prediction was
    wrong corrects it (90%), and some whose prediction was right confirm it (40%); for
    regression, the measured outcome arrives for 60% of the predictions.

    Raises:
        InputError: ``task`` has no demo case, ``traffic`` or ``rounds`` out of range.
        ModelloopError: ``directory`` already holds a project (and not ``fresh``), or the first
            version misses its requirement.
    """
    if task not in DEMO_CASES:
        raise InputError(f"option '--task': received {task!r}; expected one of {', '.join(DEMO_CASES)}")
    if isinstance(traffic, bool) or not isinstance(traffic, int) or traffic < 1:
        raise InputError(f"option '--traffic': received {traffic!r}; expected a positive number of requests")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not 1 <= rounds <= MAX_ROUNDS:
        raise InputError(f"option '--rounds': received {rounds!r}; expected an integer from 1 to {MAX_ROUNDS}")
    case = DEMO_CASES[task]
    say = progress or (lambda m: log.info(m))
    directory = Path(directory)
    if (directory / SPEC_FILE).exists():
        if not fresh:
            raise ModelloopError(f"{directory}: already holds a modelloop project; expected a new folder "
                                 "(pass --fresh to start the demo over in it)")
        shutil.rmtree(directory)
    if case.run is not None:  # a case with its own simulated users (one round)
        return case.run(directory, traffic=traffic, seed=seed, progress=progress)
    t0 = time.perf_counter()
    directory.mkdir(parents=True, exist_ok=True)
    init_args, live = case.prepare(directory)
    regression = case.numeric
    metric = case.metric
    held, chunks = plan_traffic(len(live.labels), rounds, traffic, seed)
    say(f"[demo] init {directory} on {init_args['data']} ({metric} >= {case.target:.2f} required)")
    project = _demo_spec(Project.init(directory, task=task, target=case.target, **init_args), pseudo_labels=True)
    first = project.run(progress=progress)
    if not first["champion"]:
        got = first["metrics"][case.metric_key]
        raise ModelloopError(f"the first version {first['version']} did not meet the requirements "
                             f"(test {metric} {got:.4f}); nothing to serve")
    say(f"[demo] traffic pool of {len(live.labels)} {case.noun}: {rounds} chunk(s) of {len(chunks[0])} to send, "
        f"{len(held)} held out (never sent, never trained on) to measure every version on")

    rng = np.random.default_rng(seed)
    truth_of: dict[str, Any] = {}  # prediction id -> the true label (or value)
    served: dict[str, tuple[list[Any], list[Any]]] = {}  # version -> (what it answered, the truth)
    round_rows: list[dict[str, Any]] = []
    retrained: list[dict[str, Any]] = []
    app = create_app(project.path)
    headers = client_headers(project)
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=30, headers=headers) as client:
        for k, chunk in enumerate(chunks, start=1):
            serving = client.get("/health").json()["model_version"]
            say(f"[demo] round {k}: serving {serving} on {server.url}; {len(chunk)} users send {case.noun}")
            sent = user_labels = 0
            for i in chunk:
                r = client.post("/predict", json=live.body(int(i)))
                r.raise_for_status()
                pred = r.json()
                sent += 1
                truth = live.labels[int(i)]
                answer = pred["value"] if regression else pred["label"]
                truth_of[pred["prediction_id"]] = truth
                got, want = served.setdefault(pred["model_version"], ([], []))
                got.append(answer)
                want.append(truth)
                right = (not regression) and answer == truth
                if rng.random() < (0.6 if regression else 0.4 if right else 0.9):
                    client.post("/feedback", json={"prediction_id": pred["prediction_id"], "label": truth}
                                ).raise_for_status()
                    user_labels += 1
            # A labeller takes items from the labelling queue: the random audit sample and the
            # most informative unlabelled predictions, each sent back with the origin it came with.
            queue = {"audit": 0, "active": 0}
            handed = client.get("/label/next", params={"n": min(LABELS_PER_ROUND, sent)})
            handed.raise_for_status()
            items = handed.json()["items"]
            for it in items:
                pid = it["prediction_id"]
                if pid not in truth_of:  # not a demo prediction: left to its lease
                    continue
                client.post("/feedback", json={"prediction_id": pid, "label": truth_of[pid],
                                               "origin": it["origin"]}).raise_for_status()
                queue[it["origin"]] += 1
            stats = client.get("/stats")
            stats.raise_for_status()
            stats = stats.json()
            audit = stats.get("live_accuracy_audit")
            got, want = served.get(serving, ([], []))
            row = {"round": k, "served_by": serving, "requests": sent, "user_labels": user_labels,
                   "queue_labels": queue,
                   "labelled_predictions": len(project.loop.store.labelled(
                       None, project.loop.spec.feedback.untrusted_clients)),
                   # the served version on everything it answered in the demo, three ways
                   "live": {**_quality(got, want, regression), "version": serving},
                   "audit": audit and {key: audit.get(key) for key in ("measure", "value", "low", "high", "n")},
                   "users": _users_figure(project, serving, regression)}
            say(f"[demo] round {k}: {sent} requests, {user_labels} user feedback labels, {queue['audit']} audit and "
                f"{queue['active']} active labels from the labelling queue")
            out = project.retrain(progress=progress)
            retrained.append(out)
            row.update(retrained=out["version"], decision=out["decision"], reasons=out["evidence"]["reasons"])
            round_rows.append(row)
            if k == 1 and k < rounds and project.loop.spec.feedback.semi_supervised == "on":
                say("[demo] the later rounds retrain without pseudo-labels (feedback.semi_supervised: off), "
                    "which would more than double each retrain's time")
                project = _demo_spec(project, pseudo_labels=False)
        served_after = client.get("/health").json()["model_version"]

    registry = project.loop.registry
    versions = []
    for m in project.models():
        manifest = registry.manifest(m["version"])
        held_figure = measure_held_out(project, m["version"], live, held, regression)
        semi = manifest.get("semi_supervised") or {}
        versions.append({
            "version": m["version"], "test_accuracy": m["accuracy"], "test_rmse": m.get("rmse"),
            "test_r2": m.get("r2"), "test_score": m.get(case.metric_key), "parent": m["parent"],
            "feedback_examples": m["feedback_examples"], "aliases": m["aliases"],
            "trained_on": _trained_on(manifest), "pseudo_labelled": semi.get("passed") if semi.get("used") else None,
            "gate": m["gate"] or ("first version" if m["parent"] is None else None),
            "live_held_out": held_figure})
    say("[demo] on the held-out live slice: " + "; ".join(
        f"{v['version']} {show_figure(v['live_held_out'])}" for v in versions))
    requests = sum(r["requests"] for r in round_rows)
    first_live = round_rows[0]["live"]
    return {
        **_outcome(project, first, retrained[-1], served_after, t0), "task": task, "versions": versions,
        "rounds": round_rows, "reports": [first["report"], *(r["report"] for r in retrained if r["report"])],
        "held_out": {"examples": len(held), "measure": "rmse" if regression else "accuracy"},
        "traffic": {"requests": requests, "rounds": rounds,
                    "live_accuracy": None if regression else first_live["value"],
                    "live_rmse": first_live["value"] if regression else None,
                    "feedback": sum(r["user_labels"] + r["queue_labels"]["audit"] + r["queue_labels"]["active"]
                                    for r in round_rows),
                    "pool": len(live.labels), "held_out": held.tolist(), "chunks": [c.tolist() for c in chunks]},
        "title": case.title, "score_name": f"test {case.metric}",
        "live_name": f"held-out live {'RMSE' if regression else 'accuracy'}",
        "traffic_line": (f"{requests} requests in {rounds} round(s), "
                         + "; ".join(f"round {r['round']} ({r['served_by']}): {show_figure(r['live'])} served, "
                                     f"{r['user_labels']} user labels, "
                                     f"{r['queue_labels']['audit'] + r['queue_labels']['active']} queue labels"
                                     for r in round_rows)),
    }


def show_figure(f: dict[str, Any] | None) -> str:
    """A live figure as text: "0.973 [0.962, 0.981] n=1000" (RMSE the same way)."""
    if not f or f.get("value") is None:
        return "n/a"
    name = "RMSE " if f.get("measure") == "rmse" else ""
    high = "?" if f.get("high") is None else f"{f['high']:.3f}"
    return f"{name}{f['value']:.3f} [{f['low']:.3f}, {high}] n={f['n']}"
