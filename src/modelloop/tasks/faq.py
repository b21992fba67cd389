"""Customer service: answer customers' questions from the team's FAQ, hand over when unsure.

A task of the loop like any other (load -> select -> fit -> assemble; retrain: feedback ->
fit_challenger -> assemble with the gate). What differs is here:

Data
    ``data.source`` is the FAQ (``builtin:faq-example`` or a CSV/TSV/JSONL/Parquet file with the
    columns of the spec's ``faq`` section); ``faq.examples`` optionally names customer questions
    with the id of the entry that answers each (an empty id: no entry does). The examples are
    split train / validation / test by entry, as classification data is by class.

Models (candidates; see :mod:`modelloop.models.retrieval`)
    ``bm25`` (lexical), ``minilm`` (frozen all-MiniLM-L6-v2: the question against each entry's
    question, answer or both, chosen on validation), ``hybrid`` (both scores fused),
    ``minilm-examples`` (the training questions become extra keys of their entries) and
    ``minilm-tuned`` (MiniLM fine-tuned contrastively on the training questions). Candidates
    that learn need example questions; with the FAQ alone the first version
    is zero-shot MiniLM: nothing is fitted and its quality is unknown until examples or feedback
    exist (the report says so), and it serves.

Abstaining
    Below a score threshold the answer is "I don't know": a person takes over. The threshold is
    chosen on validation: with out-of-scope validation questions, the one that best separates
    them from the in-scope ones (Youden's J), lowered if need be so that at least
    ``faq.answer_rate`` of the in-scope ones are answered; otherwise the one that answers
    ``faq.answer_rate`` of the in-scope ones. Fine-tuning learns from out-of-scope questions too:
    they are trained to score below the threshold, the others above. A zero-shot version without
    validation questions uses a fixed cosine (:data:`DEFAULT_THRESHOLD`), marked uncalibrated.

Feedback and retraining
    ``POST /answer`` logs each answer. Feedback on it: ``label`` = the id of the right entry (an
    agent's correction; ``__none__``: no entry answers it), thumbs up (the answer shown was right;
    on an abstention: handing over was right), thumbs down (the answer shown was wrong). Labelled
    questions become (question, entry) pairs: the challenger fine-tunes from the champion's
    adapters on the examples plus those pairs (kept as keys too when the champion uses its
    questions as keys). A share of predictions
    (``feedback.holdout_fraction``, by a hash of the id) is held out for the gate, which
    compares champion and challenger per question (reciprocal rank, paired Wilcoxon test) on the
    test examples and on the held-out feedback.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.faq import (
    BUILTIN,
    NO_ANSWER,
    Examples,
    Faq,
    builtin_faq_example,
    load_examples,
    load_faq,
    question_of,
    split_examples,
)
from ..errors import DataError, InputError, RegistryError, SpecError
from ..feedback.sampling import feedback_fingerprint, is_holdout, trained_fingerprint
from ..registry.artifact import MANIFEST, PREPROCESSING, WEIGHTS, library_versions
from ..spec import DataSpec, FaqSpec, Spec
from .base import Candidate, Task
from .stages import Context, FeedbackSet, Fitted, NewVersion, best_on_validation

__all__ = ["FaqAnswering", "FaqModel", "FaqData", "rank_metrics", "choose_threshold", "CANDIDATES", "NO_ANSWER",
           "DEFAULT_THRESHOLD", "faq_spec", "load_version"]

log = logging.getLogger(__name__)

FAQ_METRICS = ("top1", "mrr@5", "recall@3")
#: candidate name -> (retriever config, needs example questions, what it is)
CANDIDATES: dict[str, tuple[dict[str, Any], bool, str]] = {
    "bm25": ({"kind": "bm25"}, False, "Okapi BM25 over each entry's question and answer"),
    "minilm": ({"kind": "dense"}, False, "frozen all-MiniLM-L6-v2: cosine to the entry's question/answer"),
    "hybrid": ({"kind": "hybrid"}, False, "MiniLM cosine fused with BM25"),
    "minilm-examples": ({"kind": "dense", "examples": True}, True,
                        "frozen MiniLM; the training questions are extra keys of their entries"),
    "minilm-tuned": ({"kind": "dense"}, True,
                     "MiniLM fine-tuned contrastively (LoRA, hard negatives) on the training questions"),
}
DEFAULT_CANDIDATES = tuple(CANDIDATES)
#: the zero-shot candidate when there is nothing to choose on
ZERO_SHOT = "minilm"
#: what a zero-shot MiniLM compares a question with: each entry's question and answer joined
ZERO_SHOT_FIELDS = "qa"
#: the abstention threshold of a dense zero-shot version with no validation questions (a cosine)
DEFAULT_THRESHOLD = 0.3
PREDICT_HINT = ("this project answers questions from an FAQ; expected POST /answer with {\"question\": \"...\", "
                "\"k\": 3}")


def faq_spec(spec: Spec) -> FaqSpec:
    return spec.faq or FaqSpec()


# ------------------------------------------------------------------------------------ metrics
def ranks(scores: np.ndarray, targets: list[int]) -> np.ndarray:
    """1-based rank of each question's right entry among the entry scores (ties: the entry counts
    after every entry with an equal score)."""
    if not len(targets):
        return np.zeros(0, dtype=np.int64)
    right = scores[np.arange(len(targets)), targets]
    return (scores >= right[:, None]).sum(axis=1).astype(np.int64)


def rank_metrics(r: np.ndarray) -> dict[str, Any]:
    """top1, mrr@5, recall@3 of in-scope questions from their right entry's ranks."""
    if not len(r):
        return {"top1": None, "mrr@5": None, "recall@3": None, "questions": 0}
    rr = np.where(r <= 5, 1.0 / r, 0.0)
    return {"top1": float(np.mean(r == 1)), "mrr@5": float(rr.mean()), "recall@3": float(np.mean(r <= 3)),
            "questions": int(len(r))}


def reciprocal_ranks(r: np.ndarray) -> np.ndarray:
    return 1.0 / np.maximum(r, 1)


def abstention(best_in: np.ndarray, right_in: np.ndarray, best_out: np.ndarray, t: float | None) -> dict[str, Any]:
    """What threshold ``t`` does: the share of in-scope questions answered (and answered right),
    and of out-of-scope questions refused."""
    t = -np.inf if t is None else t
    ans_in = best_in >= t
    return {"threshold": None if t == -np.inf else float(t),
            "in_scope_answered": float(ans_in.mean()) if len(ans_in) else None,
            "in_scope_refused": float(1 - ans_in.mean()) if len(ans_in) else None,
            "accuracy_when_answered": float(right_in[ans_in].mean()) if ans_in.any() else None,
            "out_of_scope_refused": float((best_out < t).mean()) if len(best_out) else None,
            "in_scope_questions": int(len(best_in)), "out_of_scope_questions": int(len(best_out))}


def choose_threshold(best_in: np.ndarray, best_out: np.ndarray, answer_rate: float) -> tuple[float | None, str]:
    """The abstention threshold and how it was chosen (see the module docs)."""
    if len(best_in) and len(best_out) >= 3:
        cands = np.unique(np.concatenate([best_in, best_out]))
        j = [np.mean(best_in >= t) + np.mean(best_out < t) for t in cands]
        t = float(cands[int(np.argmax(j))])
        floor = float(np.quantile(best_in, 1 - answer_rate, method="lower"))
        how = (f"the best separation of {len(best_in)} in-scope and {len(best_out)} out-of-scope validation "
               "questions (Youden's J)")
        if floor < t:
            return floor, how + f", lowered to answer {answer_rate:.0%} of the in-scope ones (faq.answer_rate)"
        return t, how
    if len(best_in):
        t = float(np.quantile(best_in, 1 - answer_rate, method="lower"))
        return t, f"answers {answer_rate:.0%} of {len(best_in)} in-scope validation questions (faq.answer_rate)"
    return None, "no validation questions"


def coverage_curve(best_in: np.ndarray, right_in: np.ndarray, best_out: np.ndarray, points: int = 11
                   ) -> list[dict[str, Any]]:
    """Coverage (share of in-scope questions answered) against accuracy when answered, and the
    out-of-scope share refused, at thresholds from the in-scope scores' quantiles."""
    if not len(best_in):
        return []
    out = []
    for q in np.linspace(0, 1, points):
        t = float(np.quantile(best_in, q, method="lower"))
        a = abstention(best_in, right_in, best_out, t)
        out.append({"threshold": t, "coverage": a["in_scope_answered"], "accuracy": a["accuracy_when_answered"],
                    "out_of_scope_refused": a["out_of_scope_refused"]})
    return out


# --------------------------------------------------------------------------------------- data
@dataclass
class FaqData:
    """The FAQ, the example questions split (``splits``: train, val, test), the data report."""

    faq: Faq
    splits: dict[str, Examples]
    report: dict[str, Any]
    fingerprint: str

    def targets(self, ex: Examples) -> tuple[list[str], list[int], list[str]]:
        """In-scope questions with their entry index, and the out-of-scope questions."""
        idx = self.faq.index()
        inq = [(q, idx[i]) for q, i in zip(ex.queries, ex.ids, strict=True) if i != NO_ANSWER and i in idx]
        out = [q for q, i in zip(ex.queries, ex.ids, strict=True) if i == NO_ANSWER]
        return [q for q, _ in inq], [e for _, e in inq], out


def _resolve(path: str, root: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else root / p


def read_data(spec: Spec, root: Path) -> tuple[Faq, Examples, dict[str, Any]]:
    """The FAQ and the example questions the spec names, checked, and the data report."""
    fs = faq_spec(spec)
    src = spec.data.source
    if src.startswith("builtin:"):
        if src != f"builtin:{BUILTIN}":
            raise DataError(f"data source {src!r}: unknown built-in FAQ; expected builtin:{BUILTIN} or a "
                            "CSV/TSV/JSONL/Parquet file of FAQ entries")
        faq, _ = builtin_faq_example()
    else:
        faq = load_faq(_resolve(src, root), fs.id_column, fs.question_column, fs.answer_column)
    if fs.examples is None:
        ex = Examples([], [], "")
    elif fs.examples.startswith("builtin:") and fs.examples != f"builtin:{BUILTIN}":
        raise DataError(f"faq.examples {fs.examples!r}: unknown built-in example questions; expected "
                        f"builtin:{BUILTIN} or a CSV/TSV/JSONL/Parquet file of questions (columns query, id)")
    elif fs.examples == f"builtin:{BUILTIN}":
        b_faq, ex = builtin_faq_example()
        missing = sorted(set(ex.ids) - set(faq.ids) - {NO_ANSWER})
        if missing:
            raise DataError(f"faq.examples 'builtin:{BUILTIN}': its questions answer entries {missing[:5]} that the "
                            f"FAQ {src!r} does not have; expected the built-in FAQ (data.source builtin:{BUILTIN})")
    else:
        ex = load_examples(_resolve(fs.examples, root), faq, fs.query_column, fs.example_id_column)
    per_entry = np.bincount([faq.index()[i] for i in ex.ids if i != NO_ANSWER], minlength=len(faq))
    report = {"source": src, "entries": len(faq), "ids_from": faq.id_from, "examples_source": fs.examples,
              "examples": len(ex), "in_scope_examples": ex.in_scope, "out_of_scope_examples": len(ex) - ex.in_scope,
              "duplicate_examples_dropped": len(ex.dropped),
              "entries_with_examples": int((per_entry > 0).sum()),
              "examples_per_entry": {"min": int(per_entry.min()) if len(faq) else 0,
                                     "median": float(np.median(per_entry)) if len(faq) else 0.0,
                                     "max": int(per_entry.max()) if len(faq) else 0}}
    return faq, ex, report


def _fingerprint(faq: Faq, ex: Examples, split) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([faq.ids, faq.questions, faq.answers, ex.queries, ex.ids, split.model_dump()]).encode())
    return h.hexdigest()[:16]


def _save(folder: Path, data: FaqData) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    body = {"faq": {"ids": data.faq.ids, "questions": data.faq.questions, "answers": data.faq.answers,
                    "source": data.faq.source, "id_from": data.faq.id_from},
            "splits": {k: {"queries": v.queries, "ids": v.ids} for k, v in data.splits.items()},
            "report": data.report}
    tmp = folder / "faq.json.tmp"
    tmp.write_text(json.dumps(body))
    tmp.replace(folder / "faq.json")


def _load_snapshot(data_dir: Path, fingerprint: str) -> FaqData:
    path = data_dir / f"faq-{fingerprint}" / "faq.json"
    if not path.is_file():
        raise RegistryError(f"dataset snapshot {fingerprint!r}: not found in {str(data_dir)!r}; expected the snapshot "
                            "written by 'modelloop run'")
    body = json.loads(path.read_text())
    f = body["faq"]
    faq = Faq(f["ids"], f["questions"], f["answers"], f["source"], f.get("id_from", "column"))
    splits = {k: Examples(v["queries"], v["ids"], f["source"]) for k, v in body["splits"].items()}
    return FaqData(faq, splits, body["report"], fingerprint)


# ------------------------------------------------------------------------------------- models
@dataclass
class FaqModel:
    """A registered retriever ready to answer (what the server, the gate and monitoring load)."""

    version: str
    manifest: dict[str, Any]
    retriever: Any
    backend: str = "torch"

    @property
    def task(self) -> str:
        return "faq"

    @property
    def class_names(self) -> list[str]:
        return [*self.retriever.ids, NO_ANSWER]

    @property
    def model(self):
        return self.retriever

    def run(self, questions: list[str]) -> list[dict[str, Any]]:
        """One answer per question (top 3 entries and whether it abstains): what a shadow scores."""
        return self.retriever.answer(list(questions), 3)


def load_version(registry, version: str) -> FaqModel:
    """Rebuild a registered retriever from its artifact folder (safetensors: loading runs no code)."""
    from safetensors.torch import load_file

    from ..models.retrieval import Retriever

    manifest = registry.manifest(version)
    if manifest.get("task") != "faq":
        raise RegistryError(f"model version {version!r}: a {manifest.get('task')} model; expected an FAQ model")
    folder = registry.path(version)
    missing = [n for n in (MANIFEST, WEIGHTS, PREPROCESSING) if not (folder / n).is_file()]
    if missing:
        raise RegistryError(f"model artifact {str(folder)!r}: missing {', '.join(missing)}")
    pre = json.loads((folder / PREPROCESSING).read_text())
    return FaqModel(version, manifest, Retriever.from_artifact(pre, load_file(str(folder / WEIGHTS))))


def _size_mb(retriever) -> float:
    """The artifact's tensors and, for a dense retriever, the encoder's weights it needs (as text
    tasks count them)."""
    from ..models.text_encoder import encoder_weight_bytes

    own = sum(t.numel() * t.element_size() for t in retriever.trainable_state_dict().values())
    return (own + (encoder_weight_bytes(retriever.config["encoder"]) if retriever.dense else 0)) / 1e6


def _latency(retriever, questions: list[str], n: int = 60) -> dict[str, float]:
    """p50/p95 ms of answering one question (the questions taken in turn)."""
    from ..evaluate.metrics import latency_ms

    qs = questions or ["hello"]
    return latency_ms(lambda i: retriever.answer([qs[i % len(qs)]], 3), runs=n, warmup=5)


@dataclass
class Measured:
    """One retriever on one set of questions: per-question ranks and best scores."""

    ranks: np.ndarray
    best_in: np.ndarray
    best_out: np.ndarray

    @property
    def right(self) -> np.ndarray:
        return self.ranks == 1


def measure(retriever, queries: list[str], targets: list[int], oos: list[str]) -> Measured:
    s = retriever.scores(queries + oos)
    s_in, s_out = s[:len(queries)], s[len(queries):]
    return Measured(ranks(s_in, targets), s_in.max(axis=1) if len(queries) else np.zeros(0),
                    s_out.max(axis=1) if len(oos) else np.zeros(0))


def _build(config: dict[str, Any], faq: Faq, keys: list[tuple[str, int]]):
    from ..models.retrieval import Retriever

    return Retriever(config, faq.ids, faq.questions, faq.answers, keys)


def fit_candidate(name: str, config: dict[str, Any], faq: Faq, keys: list[tuple[str, int]], epochs: int,
                  seed: int, start: dict[str, torch.Tensor] | None = None, say=None, oos: list[str] = (),
                  null_score: float | None = None):
    """One candidate fitted: indexed (and, for the tuned one, fine-tuned on ``keys`` and on the
    out-of-scope questions ``oos``) -> (retriever, record)."""
    from ..models.retrieval import fine_tune

    t0 = time.perf_counter()
    r = _build(config, faq, keys)
    record: dict[str, Any] = {}
    if name == "minilm-tuned" or config.get("lora"):
        record = fine_tune(r, list(keys) + [(q, -1) for q in oos], epochs=epochs, seed=seed, start=start, say=say,
                           null_score=DEFAULT_THRESHOLD if null_score is None else null_score)
    else:
        r.index()
    record["seconds"] = round(time.perf_counter() - t0, 2)
    return r, record


# ---------------------------------------------------------------------------------------- task
class FaqAnswering(Task):
    name = "faq"
    input_kind = "question"
    problem = "ranking"
    resumable = False  # an FAQ run starts again from its data
    candidates: dict[str, Candidate] = {n: Candidate(n, c["kind"], {}, {}, c["kind"] != "bm25", about)
                                         for n, (c, _, about) in CANDIDATES.items()}
    default_candidates = DEFAULT_CANDIDATES
    score_name = "val top1"
    metric_kind = "answer ranking"
    metrics = FAQ_METRICS
    default_metric = "top1"
    json_example = '{"question": "How do I reset my password?", "k": 3}'
    served_route = "/answer"

    def _check_candidates(self, spec: Spec) -> None:
        if spec.selection.candidates:
            raise SpecError(f"field 'selection.candidates': received {spec.selection.candidates!r}; expected none for "
                            "faq: list them under faq.candidates")
        for c in faq_spec(spec).candidates or []:
            if c not in CANDIDATES:
                raise SpecError(f"field 'faq.candidates': received {c!r}; expected some of {', '.join(CANDIDATES)}")

    # -- inputs (served through POST /answer) ------------------------------------------------
    def prepare(self, data: DataSpec, base_dir: Path):
        raise InputError("FAQ data is loaded with the project's spec (its faq section); expected 'modelloop run DIR'")

    def candidates_for(self, ds) -> tuple[list[str], dict[str, str]]:
        return list(DEFAULT_CANDIDATES), {}

    def collate(self, items: list[Any], like) -> tuple[Any, list[bool]]:
        out, ok = [], []
        for it in items:
            q = question_of(it)
            ok.append(q is not None)
            if q is not None:
                out.append(q)
        return out, ok

    def parse_json(self, body: Any, model, limits=None) -> tuple[Any, bool]:
        raise InputError(PREDICT_HINT)

    def check_predict(self) -> None:
        raise InputError(PREDICT_HINT)

    def describe_input(self, model) -> dict[str, Any]:
        return {"input": "a customer's question", "endpoints": ["POST /answer", "GET /gaps"],
                "entries": len(model.retriever.ids) if model is not None else None}

    def request_schema(self, model, limits=None) -> dict[str, Any]:
        from .faq_http import answer_schema

        return answer_schema(FaqSpec().max_question_chars, FaqSpec().max_k)

    # -- run ----------------------------------------------------------------------------------
    def load(self, ctx: Context, run) -> FaqData:
        spec = ctx.spec
        ctx.say(f"[data] loading and validating the FAQ {spec.data.source}"
                + (f" and the example questions {faq_spec(spec).examples}" if faq_spec(spec).examples else ""))
        faq, ex, report = read_data(spec, ctx.paths.root)
        sp = spec.data.split
        splits = split_examples(ex, sp.validation, sp.test, sp.seed)
        fp = _fingerprint(faq, ex, sp)
        report["split"] = {k: {"questions": len(v), "in_scope": v.in_scope} for k, v in splits.items()}
        data = FaqData(faq, splits, report, fp)
        _save(ctx.paths.data / f"faq-{fp}", data)
        run.save(dataset=fp)
        ctx.say(f"[data] {len(faq)} FAQ entries; {len(ex)} example questions ({ex.in_scope} in scope); split train "
                f"{len(splits['train'])}, validation {len(splits['val'])}, test {len(splits['test'])}")
        return data

    def reload(self, ctx: Context, fingerprint: str) -> FaqData:
        return _load_snapshot(ctx.paths.data, fingerprint)

    def _keys(self, data: FaqData, ex: Examples) -> list[tuple[str, int]]:
        q, t, _ = data.targets(ex)
        return list(zip(q, t, strict=True))

    def select(self, ctx: Context, data: FaqData, run, time_left: float) -> tuple[dict[str, Any], Any]:
        """Every candidate the data allows, fitted on train and judged on validation by the
        requirement's metric; MiniLM's fields (question, answer, both) and the hybrid's weight are
        chosen on validation too. Without validation questions: zero-shot MiniLM, unmeasured."""
        spec, fs = ctx.spec, faq_spec(ctx.spec)
        metric = spec.requirements.metric
        names = list(fs.candidates or DEFAULT_CANDIDATES)
        val_q, val_t, val_out = data.targets(data.splits["val"])
        keys = self._keys(data, data.splits["train"])
        train_out = data.targets(data.splits["train"])[2]
        board: list[dict[str, Any]] = []
        if not val_q:
            usable = [n for n in names if not CANDIDATES[n][1]]
            if not usable:
                raise SpecError(f"field 'faq.candidates': received {names}; each needs example questions with a "
                                "validation split (faq.examples), which this project has not; expected also one of "
                                "bm25, minilm or hybrid")
            chosen = ZERO_SHOT if ZERO_SHOT in usable else usable[0]
            config = {**CANDIDATES[chosen][0], "fields": ZERO_SHOT_FIELDS}
            for n in names:
                board.append({"candidate": n, "config": {**CANDIDATES[n][0]}, "val": None,
                              "decision": ("chosen: zero-shot (no validation questions to choose on)" if n == chosen
                                           else "not measured: no validation questions")})
            sizes = {k: len(v) for k, v in data.splits.items()}
            ctx.say(f"[selection] no in-scope validation questions to choose on ({sizes['train']} training, "
                    f"{sizes['test']} test questions): {chosen} zero-shot")
            return {"chosen": chosen, "shipped": chosen, "rule": "zero-shot default: no validation questions",
                    "warning": "no in-scope validation questions: the candidates were not compared", "excluded": {},
                    "leaderboard": board, "config": config, "measured": False}, None
        t0 = time.perf_counter()
        ctx.say(f"[selection] candidates {', '.join(names)} (by validation {metric}; {len(val_q)} in-scope and "
                f"{len(val_out)} out-of-scope validation questions)")
        fitted: dict[str, Any] = {}
        fields = ZERO_SHOT_FIELDS
        for n in names:
            base, needs_examples, _ = CANDIDATES[n]
            row: dict[str, Any] = {"candidate": n}
            if needs_examples and not keys:
                row.update(config=dict(base), val=None, decision="skipped: no training questions")
                board.append(row)
                continue
            if time.perf_counter() - t0 > time_left and board:
                row.update(config=dict(base), val=None, decision="skipped: selection time budget spent")
                board.append(row)
                continue
            variants = [{**base, "fields": fields}]
            if n == "minilm":
                variants = [{**base, "fields": f} for f in ("qa", "question", "answer", "both")]
            elif n == "hybrid":
                variants = [{**base, "fields": fields, "weight": w} for w in (0.1, 0.2, 0.3, 0.5)]
            best = None
            for cfg in variants:
                r, rec = ctx.backend.fit_with(fit_candidate, n, cfg, data.faq, keys, fs.fine_tune_epochs, spec.seed,
                                              None, None, train_out)
                m = measure(r, val_q, val_t, val_out)
                vm = rank_metrics(m.ranks)
                if best is None or vm[metric] > best[1][metric]:
                    best = (cfg, vm, r, rec, m)
            cfg, vm, r, rec, m = best
            if n == "minilm":
                fields = cfg["fields"]
            lat = _latency(r, val_q[:30])
            row.update(config=cfg, val=vm, fit_s=rec["seconds"], p50_ms=lat["p50_ms"], p95_ms=lat["p95_ms"],
                       size_mb=_size_mb(r), training=rec)
            board.append(row)
            fitted[n] = (r, m, rec)
            ctx.say(f"[selection] {n}: val top1 {vm['top1']:.4f}, MRR@5 {vm['mrr@5']:.4f}, recall@3 "
                    f"{vm['recall@3']:.4f} ({rec['seconds']:.1f} s"
                    + (f"; fields {cfg['fields']}" if n == "minilm" else "")
                    + (f"; lexical weight {cfg['weight']}" if n == "hybrid" else "") + ")")
        top = best_on_validation(board, metric, ctx.say)
        sel = {"chosen": top["candidate"], "shipped": top["candidate"], "rule": f"best validation {metric}",
               "warning": None, "excluded": {}, "leaderboard": board, "config": top["config"], "measured": True}
        return sel, fitted[top["candidate"]]

    def fit(self, ctx: Context, data: FaqData, selection: dict[str, Any], fitted: Any, run, resume: bool,
            time_left) -> Fitted:
        """The chosen candidate as selection fitted it (zero-shot: indexed now), its abstention
        threshold chosen on validation."""
        name, config = selection["chosen"], dict(selection["config"])
        if fitted is None:
            r, rec = ctx.backend.fit_with(fit_candidate, name, config, data.faq, self._keys(data, data.splits["train"]),
                                          faq_spec(ctx.spec).fine_tune_epochs, ctx.spec.seed, None, None,
                                          data.targets(data.splits["train"])[2])
            m = None
        else:
            r, m, rec = fitted
        self._calibrate(ctx, r, m, data.splits["val"], data)
        return Fitted(r, r.get_config(), rec, {"candidate": name, "val": next(
            (row["val"] for row in selection["leaderboard"] if row["candidate"] == name), None)})

    def _calibrate(self, ctx: Context, r, m: Measured | None, val: Examples, data: FaqData,
                   extra: tuple[list[str], list[int], list[str]] | None = None) -> None:
        q, t, out = data.targets(val)
        if extra:
            q, t, out = q + extra[0], t + extra[1], out + extra[2]
        if m is None or extra:
            m = measure(r, q, t, out)
        thr, how = choose_threshold(m.best_in, m.best_out, faq_spec(ctx.spec).answer_rate)
        if thr is None and r.config["kind"] != "bm25":
            thr, how = DEFAULT_THRESHOLD, (f"uncalibrated default cosine {DEFAULT_THRESHOLD} (no validation questions; "
                                           "calibrated once examples or feedback exist)")
        r.config["threshold"] = thr
        r.config["threshold_rule"] = how
        r.config["threshold_validation"] = abstention(m.best_in, m.right, m.best_out, thr) if len(m.best_in) else None
        ctx.say(f"[abstain] threshold {'none' if thr is None else f'{thr:.4f}'}: {how}")

    # -- retrain ------------------------------------------------------------------------------
    def feedback(self, ctx: Context, parent: FaqModel, data: FaqData) -> FeedbackSet:
        """Labelled questions from feedback (see the module docs), split by prediction id into
        training, validation (the threshold) and the gate's hold-out."""
        spec = ctx.spec
        events = ctx.store().feedback_events(spec.feedback.untrusted_clients)
        known = set(data.faq.ids) | set(parent.retriever.ids)
        pairs, counts = feedback_pairs(events, known)
        fingerprint = feedback_fingerprint((f"{p}\t{i}", 1.0) for p, (_, i) in sorted(pairs.items()))
        train, val, hold = [], [], []
        for pid in sorted(pairs):
            if is_holdout(pid, spec.feedback.holdout_fraction):
                hold.append(pid)
            elif is_holdout(f"{pid}:validation", 0.25):
                val.append(pid)
            else:
                train.append(pid)
        return FeedbackSet(fingerprint, len(pairs), train, val, hold, {"pairs": pairs, "counts": counts})

    def fit_challenger(self, ctx: Context, parent: FaqModel, data: FaqData, fb: FeedbackSet, run) -> Fitted:
        """MiniLM fine-tuned on the training questions and the feedback pairs (out-of-scope ones
        included), from the champion's adapters (the pretrained weights when it has none; a
        lexical champion's challenger is MiniLM, which can learn from them). Feedback on a
        question of the validation or test split is not learned from: the gate measures there."""
        spec = ctx.spec
        pairs = fb.data["pairs"]
        idx = data.faq.index()
        measured = set(data.splits["val"].queries) | set(data.splits["test"].queries)
        use = [p for p in fb.train_ids if pairs[p][0] not in measured and (pairs[p][1] in idx or
                                                                            pairs[p][1] == NO_ANSWER)]
        fb.data["counts"]["in_measured_splits"] = sum(1 for p in fb.train_ids if pairs[p][0] in measured)
        fb_keys = [(pairs[p][0], idx[pairs[p][1]]) for p in use if pairs[p][1] in idx]
        keys = self._keys(data, data.splits["train"]) + fb_keys
        oos = data.targets(data.splits["train"])[2] + [pairs[p][0] for p in use if pairs[p][1] == NO_ANSWER]
        ctx.say(f"[retrain] champion {parent.version}; {len(use)} feedback questions to learn from "
                f"({len(fb_keys)} in scope, {len(use) - len(fb_keys)} answered by no entry), {len(fb.val_ids)} to set "
                f"the threshold, {len(fb.hold_ids)} held out for the gate")
        run.write("feedback_counts.json", fb.data["counts"])
        config = {k: v for k, v in parent.retriever.get_config().items()
                  if k not in ("threshold", "threshold_rule", "threshold_validation")}
        start = dict(parent.retriever._adapters) or None
        if config["kind"] == "bm25":
            config, start = {**CANDIDATES["minilm-tuned"][0], "fields": ZERO_SHOT_FIELDS}, None
        if keys or oos:
            r, rec = ctx.backend.fit_with(fit_candidate, "minilm-tuned", config, data.faq, keys,
                                          faq_spec(spec).fine_tune_epochs, spec.seed, start, ctx.say, oos,
                                          parent.retriever.config.get("threshold"))
        else:  # nothing to learn from (every feedback question is measured on): the champion's model again
            from ..models.retrieval import Retriever

            r = Retriever.from_artifact(parent.retriever.preprocessing(), parent.retriever.trainable_state_dict())
            rec = {"seconds": 0.0, "stopped": "nothing to learn from"}
        extra = _split_questions(pairs, fb.val_ids, idx)
        self._calibrate(ctx, r, None, data.splits["val"], data, extra)
        rec["feedback_pairs"] = len(use)
        return Fitted(r, r.get_config(), rec, {"candidate": "minilm-tuned" if r.config.get("lora") else
                                                parent.manifest["model"]["candidate"], "val": None})

    # -- a version ----------------------------------------------------------------------------
    def assemble(self, ctx: Context, data: FaqData, fitted: Fitted, run, *, parent: FaqModel | None = None,
                 selection=None, fb: FeedbackSet | None = None, title: str,
                 monitoring: dict[str, Any] | None = None) -> NewVersion:
        from ..gate import check_requirements

        spec, r = ctx.spec, fitted.model
        test_q, test_t, test_out = data.targets(data.splits["test"])
        m = measure(r, test_q, test_t, test_out)
        metrics: dict[str, Any] = {**rank_metrics(m.ranks),
                                   "abstention": abstention(m.best_in, m.right, m.best_out, r.config["threshold"]),
                                   "coverage_curve": coverage_curve(m.best_in, m.right, m.best_out),
                                   "measured_on": "test split of the example questions" if test_q else None}
        latency = _latency(r, (test_q or data.faq.questions)[:30])
        size_mb = _size_mb(r)
        measured = bool(test_q)
        if measured:
            baseline = self.baseline(ctx, data, m) if spec.requirements.target is None else None
            gate = check_requirements(spec.requirements, metrics, latency, size_mb, baseline)
        else:
            gate = unmeasured_requirements(spec, latency, size_mb)
        decision = champ_test = None
        fingerprint = data.fingerprint
        if parent is not None:
            champ_test = measure(parent.retriever, test_q, _remap(test_t, data.faq, parent.retriever), [])
            decision = self._gate(ctx, parent, r, m, champ_test, fb, gate)
            fingerprint = trained_fingerprint(data.fingerprint, fb.train_ids)
            ctx.say(f"[gate] {decision['decision']}: {'; '.join(decision['reasons'])}")
        elif measured:
            ctx.say(f"[evaluation] test top1 {metrics['top1']:.4f}, MRR@5 {metrics['mrr@5']:.4f}, recall@3 "
                    f"{metrics['recall@3']:.4f}, p95 latency {latency['p95_ms']:.2f} ms")
        else:
            ctx.say(f"[evaluation] no test questions: quality unknown (serving anyway); p95 latency "
                    f"{latency['p95_ms']:.2f} ms")
        candidate = fitted.extra["candidate"]
        train = data.splits["train"]
        manifest = {
            "task": "faq", "name": spec.name,
            "model": {"kind": r.config["kind"], "candidate": candidate, "family": candidate, "config": r.get_config(),
                      "params": {k: v for k, v in r.get_config().items() if k != "kind"}},
            "class_names": [], "metrics": {"test": metrics, "val": fitted.extra.get("val")}, "latency": latency,
            "size_mb": size_mb, "requirements": gate, "measured": measured,
            "dataset": {"fingerprint": fingerprint, "base_fingerprint": data.fingerprint, "source": spec.data.source,
                        "train_examples": len(train), "test_examples": len(data.splits["test"]),
                        "entries": len(data.faq), "report": data.report},
            "split": spec.data.split.model_dump(), "selection": selection, "run_id": run.run_id,
            "parent": parent.version if parent else None,
            "feedback_examples": len(fb.train_ids) if fb else 0, "feedback_holdout": len(fb.hold_ids) if fb else 0,
            "feedback_validation": len(fb.val_ids) if fb else 0,
            "feedback_fingerprint": fb.fingerprint if fb else feedback_fingerprint([]),
            "training": {"seconds": fitted.result.get("seconds", 0.0), "record": fitted.result,
                         "stopped": fitted.result.get("stopped", "fitted")},
            "abstention": {"threshold": r.config["threshold"], "rule": r.config.get("threshold_rule"),
                           "validation": r.config.get("threshold_validation")},
            "serving": {"backend": "torch", "note": "one encoder pass and one matrix product per question"},
            "spec": spec.to_dict(), "libraries": library_versions(),
        }
        if decision is not None:
            manifest["gate"] = decision
        if fb is not None:
            manifest["feedback"] = fb.data["counts"]
        name = spec.name

        def report(path, version: str) -> None:
            write_report_page(path, f"{title}: {name} {version}", {**manifest, "version": version})

        result: dict[str, Any] = {
            "run_id": run.run_id, "parent": parent.version if parent else None, "metrics": metrics,
            "val_metrics": fitted.extra.get("val"), "latency": latency, "size_mb": size_mb, "gate": gate,
            "passed": gate["passed"], "champion": False, "family": candidate, "dataset": fingerprint,
            "feedback_examples": len(fb.train_ids) if fb else 0, "decision": None, "task": self.name,
            "measured": measured}
        if parent is not None:
            result.update(feedback_validation=len(fb.val_ids), feedback_holdout=len(fb.hold_ids),
                          decision=decision["decision"], evidence=decision,
                          champion_metrics=rank_metrics(champ_test.ranks), challenger_metrics=metrics)
        return NewVersion(manifest, r, r.preprocessing(), report, result)

    def baseline(self, ctx: Context, data: FaqData, m: Measured) -> dict[str, Any]:
        """Always answering the entry with the most training questions: what a requirement
        without a target asks to beat (paired per test question)."""
        from ..gate import beats_baseline

        _, train_t, _ = data.targets(data.splits["train"])
        _, test_t, _ = data.targets(data.splits["test"])
        common = int(np.bincount(train_t, minlength=len(data.faq)).argmax()) if train_t else 0
        base = (np.asarray(test_t) == common).astype(float)
        return beats_baseline(m.right.astype(float), base, ctx.spec.gate.confidence,
                              name=f"most asked entry ({data.faq.ids[common]!r})", baseline_value=float(base.mean()),
                              binary=True, unit="question")

    def _gate(self, ctx: Context, parent: FaqModel, r, m: Measured, champ_m: Measured, fb: FeedbackSet,
              chall_req: dict[str, Any]) -> dict[str, Any]:
        """Champion (``champ_m`` on the test questions) vs challenger (``m``), paired per question,
        on the test questions and on the held-out feedback questions both know the entry of."""
        from ..gate import compare_answers

        pairs = fb.data["pairs"]
        hold = [(pairs[p][0], pairs[p][1]) for p in fb.hold_ids if pairs[p][1] != NO_ANSWER]
        known_both = set(parent.retriever.ids) & set(r.ids)
        hold = [(q, i) for q, i in hold if i in known_both]
        hq = [q for q, _ in hold]
        fa = measure(parent.retriever, hq, [parent.retriever.ids.index(i) for _, i in hold], [])
        fc = measure(r, hq, [r.ids.index(i) for _, i in hold], [])
        return compare_answers(ctx.spec, reciprocal_ranks(champ_m.ranks), reciprocal_ranks(m.ranks),
                               reciprocal_ranks(fa.ranks), reciprocal_ranks(fc.ranks), chall_req)

    # -- monitoring and the registry's views --------------------------------------------------
    def monitor(self, ctx: Context, champ: FaqModel) -> dict[str, Any]:
        """Drift of the questions asked (MiniLM embeddings, MMD against the example questions;
        not measured without them), live accuracy from feedback (a thumbs down counts as wrong),
        the hand-over rate and the gaps."""
        from ..feedback.drift import mmd_test
        from .faq_http import gaps

        spec, store = ctx.spec, ctx.store()
        ms = spec.monitor
        data = self.reload(ctx, champ.manifest["dataset"]["base_fingerprint"])
        # The reference is customers' own questions: the FAQ's questions are not a sample of what
        # customers ask (their wording differs by design), so without example questions drift is
        # not measured.
        ref = data.splits["train"].queries + data.splits["val"].queries
        items, served = store.recent_raw(limit=ms.window)
        live, _ = self.collate(items, champ)
        r = champ.retriever
        if len(live) >= 20 and len(ref) >= 20 and r.dense:
            rng = np.random.default_rng(spec.seed)
            pick = rng.choice(len(ref), size=min(ms.reference_size, len(ref)), replace=False)
            drift = mmd_test(r.embed([ref[i] for i in pick]).numpy(), r.embed(live).numpy(), ms.permutations,
                             ms.drift_p_value, seed=spec.seed)
            drift["embedding"] = "the served model's MiniLM question embeddings"
        else:
            drift = {"detected": False, "statistic": None, "threshold": None, "p_value": None, "n_reference": len(ref),
                     "n_live": len(live), "reason": ("a lexical model has no embeddings to compare" if not r.dense
                                                     else "no example questions (faq.examples) to compare live "
                                                          "questions with" if not ref
                                                     else f"{len(live)} live and {len(ref)} reference questions; at "
                                                          "least 20 of each needed")}
        abstained = sum(1 for s in served if s == NO_ANSWER)
        untrusted = spec.feedback.untrusted_clients
        stats = store.feedback_stats(untrusted, model_version=champ.version, class_names=None,
                                     confidence=spec.gate.confidence)
        since = max(champ.manifest["created_at"], ctx.watch_state().get("last_retrain_at", 0.0))
        events = store.feedback_events(untrusted)
        new = len({e["prediction_id"] for e in events if e["created_at"] > since})
        return {
            "model_version": champ.version, "drift": drift,
            "prediction_drift": {"psi": None, "threshold": ms.psi_threshold, "detected": False, "reference": {},
                                 "live": {}},
            "live_accuracy": {"value": stats["live_accuracy"], "low": stats["low"], "high": stats["high"],
                              "n": stats["labelled"], "confidence": stats["confidence"]},
            "abstention": {"answers": len(served), "abstained": abstained,
                           "rate": abstained / len(served) if served else None},
            "gaps": gaps(store, spec.feedback.untrusted_clients, champ, limit=5),
            "feedback": {"labelled": stats["labelled"], "new_since_last_training": new, **store.counts()},
        }

    def read_output(self, model: FaqModel, output: dict[str, Any]) -> tuple[str, dict[str, float], dict[str, Any]]:
        """One answer (:meth:`FaqModel.run`) -> the label the store keeps (the top entry, or
        ``__none__`` when it abstains), the listed entries' scores, and the answer's fields."""
        answers = output["answers"]
        label = NO_ANSWER if output["abstained"] or not answers else answers[0]["id"]
        return label, {a["id"]: a["score"] for a in answers}, {"abstained": output["abstained"], "answers": answers}

    def shadow_report(self, ctx: Context, version: str) -> dict[str, Any]:
        """How often the shadow's answer (its top entry, or a hand-over) agrees with the served
        one, and each one's accuracy on the answers feedback judged."""
        from .supervised import shadow_agreement

        return shadow_agreement(ctx, version, None)

    def rollback_check(self, ctx: Context, champion: str, predecessor: str) -> dict[str, Any]:
        """Is the champion's live accuracy (served answers, hand-overs included, that feedback
        confirmed) significantly below its predecessor's? (see ``supervised.live_accuracy_rollback``)"""
        from .supervised import live_accuracy_rollback

        return live_accuracy_rollback(ctx, champion, predecessor, None)

    def models_row(self, m: dict[str, Any]) -> dict[str, Any]:
        test = m["metrics"]["test"]
        return {
            "version": m["version"], "aliases": m["aliases"], "family": m["model"].get("candidate"), "task": "faq",
            "top1": test.get("top1"), "mrr@5": test.get("mrr@5"), "recall@3": test.get("recall@3"),
            "accuracy": test.get("top1"), "f1_macro": None,
            "headline": [["top1", test.get("top1")], ["MRR@5", test.get("mrr@5")]],
            "parent": m.get("parent"), "dataset": m["dataset"]["fingerprint"],
            "feedback_examples": m.get("feedback_examples", 0), "created_at": m["created_at"],
            "requirements_passed": m["requirements"]["passed"], "gate": (m.get("gate") or {}).get("decision"),
            "gate_reasons": (m.get("gate") or {}).get("reasons"), "report": m.get("report"),
            "measured": m.get("measured", True),
        }

    def headline(self, metrics: dict[str, Any]) -> str:
        if metrics.get("top1") is None:
            return "quality unknown (no test questions)"
        a = metrics.get("abstention") or {}
        return (f"top1 {metrics['top1']:.4f}, MRR@5 {metrics['mrr@5']:.4f}, recall@3 {metrics['recall@3']:.4f}"
                + (f", out-of-scope refused {a['out_of_scope_refused']:.2f}"
                   if a.get("out_of_scope_refused") is not None else ""))

    # -- projects, the command line and the Python API -----------------------------------------
    default_data = f"builtin:{BUILTIN}"
    data_hint = "an FAQ file (CSV/TSV/JSONL/Parquet with columns id, question, answer) or builtin:faq-example"
    init_options = ("id_column", "question_column", "answer_column", "examples", "query_column", "example_id_column",
                    "candidates", "answer_rate")

    def init_spec(self, spec: dict[str, Any], options: dict[str, Any]) -> None:
        """The options are fields of the spec's ``faq`` section; ``examples`` a path (stored
        absolute) or ``builtin:faq-example``; ``candidates`` a list or comma-separated names."""
        section: dict[str, Any] = {}
        for key, value in options.items():
            if key == "examples" and value is not None and not str(value).startswith("builtin:"):
                value = str(Path(value).resolve())
            if key == "candidates" and isinstance(value, str):
                value = [c.strip() for c in value.split(",") if c.strip()]
            section[key] = value
        spec["faq"] = section

    def check_project(self, spec, root: Path) -> None:
        read_data(spec, root)  # columns, ids and examples checked at init, not at the first run

    def offline_inputs(self, files, texts, rows):
        if not texts:
            raise InputError("modelloop predict: expected --text QUESTION (one or more) for an FAQ project")
        return list(texts), list(texts), "question"

    def predict_offline(self, model: FaqModel, inputs: Any) -> list[dict[str, Any]]:
        """Questions (a text or a list) -> the top 3 entries of each and whether it abstains."""
        if isinstance(inputs, str):
            inputs = [inputs]
        return [{"abstained": a["abstained"], "answers": a["answers"], "model_version": model.version}
                for a in model.retriever.answer([str(q) for q in inputs], 3)]

    # -- serving ------------------------------------------------------------------------------
    def serve_model(self, registry, version: str, *, backend: str | None = None, threads: int = 1):
        return load_version(registry, version)

    def routes(self, ctx):
        """``POST /answer`` and ``GET /gaps``."""
        from .faq_http import router

        return router(ctx)

    def check_feedback(self, label, predicted: str, version: str, ctx) -> str:
        """``label``: the id of the entry that answers the question (``__none__``: none does); no
        label (thumbs) confirms or denies what was served: the top entry, or the hand-over."""
        from .faq_http import check_entry

        return check_entry(ctx, version, label, predicted, lambda v: self.serve_model(ctx.registry, v))


def _remap(targets: list[int], faq: Faq, retriever) -> list[int]:
    """Entry indices of ``faq`` -> the same entries' indices in ``retriever`` (same FAQ, same order)."""
    pos = {e: i for i, e in enumerate(retriever.ids)}
    return [pos[faq.ids[t]] for t in targets]


def feedback_pairs(events: list[dict[str, Any]], known: set[str]) -> tuple[dict[str, tuple[str, str]], dict[str, Any]]:
    """Feedback on answers -> {prediction id: (question, entry id or ``__none__``)} (the latest
    label or thumbs of a prediction wins: a thumbs down leaves it without a pair), and counts of
    what was kept and why not (ratings and clicks say nothing about which entry is right)."""
    latest: dict[str, tuple[str, str] | None] = {}
    counts = {"feedback_rows": len(events), "labelled": 0, "thumbs_up": 0, "thumbs_down": 0, "out_of_scope": 0,
              "not_an_answer": 0, "unknown_entry": 0, "other_kinds": 0}
    for e in events:
        q = question_of(e.get("input"))
        if q is None:
            counts["not_an_answer"] += 1
            continue
        kind = e.get("kind") or "label"
        if kind not in ("label", "thumbs"):
            counts["other_kinds"] += 1  # a rating or a click says nothing about which entry is right
            continue
        if kind == "thumbs":
            if (e.get("value") or 0) > 0:
                label = str(e["label"])
                if label != NO_ANSWER and label not in known:
                    counts["unknown_entry"] += 1
                    continue
                counts["thumbs_up"] += 1
                latest[e["prediction_id"]] = (q, label)
            else:
                counts["thumbs_down"] += 1
                latest[e["prediction_id"]] = None  # wrong, but which entry is right is not known
            continue
        label = str(e["label"])
        if label != NO_ANSWER and label not in known:
            counts["unknown_entry"] += 1
            continue
        counts["labelled"] += 1
        latest[e["prediction_id"]] = (q, label)
    pairs = {p: v for p, v in latest.items() if v is not None}
    counts["out_of_scope"] = sum(1 for _, i in pairs.values() if i == NO_ANSWER)
    counts["pairs"] = len(pairs)
    return pairs, counts


def _split_questions(pairs: dict[str, tuple[str, str]], pids: list[str], idx: dict[str, int]
                     ) -> tuple[list[str], list[int], list[str]]:
    inq = [(pairs[p][0], idx[pairs[p][1]]) for p in pids if pairs[p][1] in idx]
    out = [pairs[p][0] for p in pids if pairs[p][1] == NO_ANSWER]
    return [q for q, _ in inq], [e for _, e in inq], out


def unmeasured_requirements(spec: Spec, latency: dict[str, float], size_mb: float) -> dict[str, Any]:
    """Requirements of a version with no test questions: quality unknown (not a failure: a first
    model with nothing to measure on still serves); the budgets still count."""
    checks = [{"name": f"test {spec.requirements.metric}", "value": None,
               "target": "unknown: no test questions (measured once example questions or feedback exist)",
               "passed": True, "unmeasured": True}]
    req = spec.requirements
    if req.p95_latency_ms is not None:
        checks.append({"name": "p95 latency (ms)", "value": latency["p95_ms"], "target": f"<= {req.p95_latency_ms}",
                       "passed": latency["p95_ms"] <= req.p95_latency_ms})
    if req.max_model_size_mb is not None:
        checks.append({"name": "model size (MB)", "value": size_mb, "target": f"<= {req.max_model_size_mb}",
                       "passed": size_mb <= req.max_model_size_mb})
    return {"passed": all(c["passed"] for c in checks), "checks": checks, "measured": False}


# -------------------------------------------------------------------------------------- report
def write_report_page(path: Path, title: str, m: dict[str, Any]) -> None:
    """The version's HTML report from its manifest ``m``."""
    from ..evaluate.report import gate_section, html_table, requirements_table, version_line, write_page

    test = m["metrics"]["test"]
    ab = m["abstention"]
    parts = [f"<h1>{html.escape(title)}</h1>",
             version_line(m),
             "<h2>Data</h2>", html_table([[k, json.dumps(v) if isinstance(v, dict) else v]
                                      for k, v in m["dataset"]["report"].items()], ["field", "value"])]
    if m.get("measured", True):
        parts += ["<h2>Test metrics</h2>",
                  html_table([[k, test.get(k)] for k in ("top1", "mrr@5", "recall@3", "questions")],
                             ["metric", "value"])]
    else:
        parts += ["<h2>Quality: unknown</h2><p>There are no example questions to measure this version on. It serves "
                  "as a zero-shot retriever; its quality is measured once example questions (faq.examples) or "
                  "feedback exist.</p>"]
    parts += ["<h2>Requirements</h2>", requirements_table(m["requirements"]),
              "<h2>Abstaining: handing over to a person</h2>",
              f"<p>threshold <b>{'none' if ab['threshold'] is None else format(ab['threshold'], '.4f')}</b>: "
              f"{html.escape(str(ab.get('rule')))}</p>"]
    a = test.get("abstention") or {}
    if a.get("in_scope_questions"):
        parts.append(html_table([[k, a.get(k)] for k in ("in_scope_answered", "accuracy_when_answered",
                                                     "out_of_scope_refused", "in_scope_questions",
                                                     "out_of_scope_questions")], ["on the test split", "value"]))
    curve = test.get("coverage_curve") or []
    if curve:
        thr = ab["threshold"]
        rows = [[p["threshold"], p["coverage"], p["accuracy"], p["out_of_scope_refused"],
                 "<- threshold" if thr is not None and abs(p["threshold"] - thr) == min(abs(c["threshold"] - thr)
                                                                                      for c in curve) else ""]
                for p in curve]
        parts += ["<h3>Coverage and accuracy (test split)</h3>",
                  html_table(rows, ["threshold", "coverage (in-scope answered)", "accuracy when answered",
                                "out-of-scope refused", ""])]
    sel = m.get("selection")
    if sel:
        parts += ["<h2>Selection (validation split)</h2>",
                  html_table([[r["candidate"], *((r.get("val") or {}).get(k) for k in ("top1", "mrr@5", "recall@3")),
                           json.dumps({k: v for k, v in (r.get("config") or {}).items() if k in ("fields", "weight")}),
                           r.get("fit_s"), r.get("p95_ms"), r.get("decision")] for r in sel["leaderboard"]],
                         ["candidate", "top1", "MRR@5", "recall@3", "settings", "fit s", "p95 ms", "decision"])]
    write_page(path, title, parts + gate_section(m.get("gate")))
