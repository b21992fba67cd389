"""Answer retrieval over an FAQ: lexical (BM25), dense (MiniLM), hybrid, and a fine-tuned MiniLM.

A :class:`Retriever` scores questions against FAQ entries: ``scores(queries)`` -> (Q, N), one
column per entry, higher is better. An entry is found through its *keys*: its question, its
answer, both (``both``: the better of the two) or both joined into one text (``qa``), and, when
``examples`` is on, the customer questions it is known to
answer (the examples and feedback it was trained with); an entry's score is its best key's.

- ``bm25``: Okapi BM25 (k1 1.5, b 0.75) over each entry's question and answer.
- ``dense``: cosine of all-MiniLM-L6-v2 sentence embeddings. The keys' embeddings are computed
  once and stored with the model, so one question costs one encoder pass and a matrix product.
- ``hybrid``: ``(1 - weight) * dense + weight * b / (b + 5)`` for a BM25 score ``b``: lexical
  matches (product names, codes) lift an entry without breaking the cosine's scale, so one
  abstention threshold still works.
- Fine-tuned (``lora`` set): the dense encoder with LoRA adapters on every linear layer of the
  transformer, trained contrastively (multiple-negatives ranking loss with in-batch negatives,
  as sentence-transformers' ``MultipleNegativesRankingLoss``) on (customer question, entry)
  pairs, starting from the pretrained weights or from a previous fine-tune's adapters. Its
  artifact holds only the adapters (safetensors) besides the keys' embeddings.

Below ``threshold`` (the best entry's score), the retriever abstains: a person should answer.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .text_encoder import DEFAULT_ENCODER, TextEncoder, _load_backbone, _mean_pool

__all__ = ["Retriever", "BM25", "fine_tune", "KINDS", "FIELDS", "entry_text"]

log = logging.getLogger(__name__)

KINDS = ("bm25", "dense", "hybrid")
FIELDS = ("question", "answer", "both", "qa")
_TOKEN = re.compile(r"[a-z0-9]+")
_STOP = frozenset("""a an the and or but if of to in on at by for with from as is are was were be been being am do does
did i me my we our you your it its this that these those there here can could would should will shall may might
must have has had not no so than too very just about into over what which who whom how when where why""".split())
#: LoRA on every linear layer of the transformer blocks (attention and feed-forward)
_LORA_TARGETS = r".*encoder\.layer\.\d+\..*(query|key|value|dense)$"
#: fine-tuning on an FAQ of at most this many entries scores every question against every entry
ALL_ENTRIES_UP_TO = 128
#: BM25 -> [0, 1) for fusion: b / (b + _B_HALF)
_B_HALF = 5.0


def tokens(text: str) -> list[str]:
    return [t for t in _TOKEN.findall(text.lower()) if t not in _STOP]


def entry_text(question: str, answer: str, fields: str) -> str:
    """The text standing for an entry: its question, its answer, or both joined (``both``, ``qa``)."""
    return question if fields == "question" else answer if fields == "answer" else f"{question} {answer}"


class BM25:
    """Okapi BM25 over documents (lower-cased words, stop words removed); rebuilt from the texts."""

    def __init__(self, docs: list[str], k1: float = 1.5, b: float = 0.75) -> None:
        from scipy.sparse import csr_matrix

        vocab: dict[str, int] = {}
        rows, cols, vals = [], [], []
        lengths = np.zeros(len(docs), dtype=np.float64)
        for d, text in enumerate(docs):
            toks = tokens(text)
            lengths[d] = len(toks)
            counts: dict[int, int] = {}
            for t in toks:
                j = vocab.setdefault(t, len(vocab))
                counts[j] = counts.get(j, 0) + 1
            for j, c in counts.items():
                rows.append(d)
                cols.append(j)
                vals.append(c)
        tf = csr_matrix((vals, (rows, cols)), shape=(len(docs), max(len(vocab), 1)), dtype=np.float64)
        df = np.bincount(cols, minlength=tf.shape[1]).astype(np.float64)
        n = len(docs)
        self.idf = np.log(1 + (n - df + 0.5) / (df + 0.5))
        avg = lengths.mean() if n else 1.0
        norm = k1 * (1 - b + b * lengths / max(avg, 1e-9))
        tf = tf.tocoo()
        w = tf.data * (k1 + 1) / (tf.data + norm[tf.row])
        # (V, N): term j's contribution to document d, idf included
        self.weights = csr_matrix((w * self.idf[tf.col], (tf.col, tf.row)), shape=(tf.shape[1], n))
        self.vocab = vocab

    def scores(self, queries: list[str]) -> np.ndarray:
        from scipy.sparse import csr_matrix

        rows, cols = [], []
        for q, text in enumerate(queries):
            for t in set(tokens(text)):
                j = self.vocab.get(t)
                if j is not None:
                    rows.append(q)
                    cols.append(j)
        qm = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(queries), self.weights.shape[0]))
        return np.asarray((qm @ self.weights).todense(), dtype=np.float32)


def check_config(config: dict[str, Any]) -> dict[str, Any]:
    """A retriever config with its defaults; InputError naming a bad field."""
    if not isinstance(config, dict):
        raise InputError(f"retriever config: received {type(config).__name__}; expected a mapping")
    cfg = {"kind": "dense", "fields": "both", "examples": False, "weight": 0.0, "encoder": DEFAULT_ENCODER,
           "max_length": 128, "lora": None, "threshold": None, **config}
    if cfg["kind"] not in KINDS:
        raise InputError(f"retriever config field 'kind': received {cfg['kind']!r}; expected one of {', '.join(KINDS)}")
    if cfg["fields"] not in FIELDS:
        raise InputError(f"retriever config field 'fields': received {cfg['fields']!r}; expected one of "
                         f"{', '.join(FIELDS)}")
    if not isinstance(cfg["weight"], int | float) or not 0 <= cfg["weight"] <= 1:
        raise InputError(f"retriever config field 'weight': received {cfg['weight']!r}; expected a number in [0, 1]")
    return cfg


class Retriever(nn.Module):
    """Scores questions against FAQ entries (see the module docs).

    Args:
        config: ``kind``, ``fields``, ``examples``, ``weight``, ``encoder``, ``max_length``,
            ``lora`` (None, or ``{"r", "alpha"}`` of the fine-tuned adapters), ``threshold``.
        ids, questions, answers: the FAQ entries.
        example_keys: (customer question, entry index) pairs used as keys when ``examples`` is on.
    """

    def __init__(self, config: dict[str, Any], ids: list[str], questions: list[str], answers: list[str],
                 example_keys: list[tuple[str, int]] | None = None) -> None:
        super().__init__()
        self.config = check_config(config)
        self.ids, self.questions, self.answers = list(ids), list(questions), list(answers)
        self.example_keys = [(str(q), int(e)) for q, e in (example_keys or [])] if self.config["examples"] else []
        self.bm25 = BM25([f"{q} {a}" for q, a in zip(questions, answers, strict=True)]) \
            if self.config["kind"] != "dense" else None
        self.encoder: TextEncoder | None = None
        self.register_buffer("key_emb", torch.zeros(0, 0))
        self.register_buffer("key_entry", torch.zeros(0, dtype=torch.int64))
        self._adapters: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # A fitted retriever may travel to another process (a distributed backend's fit): the
        # lock stays behind and a new one is made there.
        state = dict(self.__dict__)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- the dense part ----------------------------------------------------------------------
    @property
    def dense(self) -> bool:
        return self.config["kind"] != "bm25"

    def key_texts(self) -> tuple[list[str], list[int]]:
        """The texts each entry is found by, and the entry of each."""
        fields = self.config["fields"]
        texts, owners = [], []
        for i, (q, a) in enumerate(zip(self.questions, self.answers, strict=True)):
            if fields in ("question", "both"):
                texts.append(q)
                owners.append(i)
            if fields in ("answer", "both"):
                texts.append(a)
                owners.append(i)
            if fields == "qa":
                texts.append(entry_text(q, a, fields))
                owners.append(i)
        for q, e in self.example_keys:
            texts.append(q)
            owners.append(e)
        return texts, owners

    def attach_encoder(self, backbone=None, tokenizer=None) -> None:
        """The query encoder: the pretrained MiniLM, or ``backbone`` (a fine-tuned one, merged)."""
        enc = TextEncoder(self.config["encoder"], max_length=self.config["max_length"], batch_size=64,
                          device="cpu", precision="fp32", num_threads=None)
        if backbone is None:
            enc.load()
        else:
            enc.tokenizer_, enc.model_, enc.device_ = tokenizer, backbone.eval(), torch.device("cpu")
        self.encoder = enc

    def index(self) -> Retriever:
        """Embed every key (after fitting or fine-tuning)."""
        if self.dense:
            if self.encoder is None:
                self.attach_encoder()
            texts, owners = self.key_texts()
            self.key_emb = self.encoder.encode(texts)
            self.key_entry = torch.tensor(owners, dtype=torch.int64)
        return self

    def embed(self, queries: list[str]) -> torch.Tensor:
        """Question embeddings (N, D). One call at a time: a server answers from several threads,
        and a fast tokenizer refuses concurrent calls that set its truncation ("Already borrowed")."""
        with self._lock:
            if self.encoder is None:
                self.attach_encoder()
            return self.encoder.encode(list(queries))

    # -- scoring -----------------------------------------------------------------------------
    @torch.inference_mode()
    def scores(self, queries: list[str], embeddings: torch.Tensor | None = None) -> np.ndarray:
        """(Q, N) entry scores, higher is better."""
        n = len(self.ids)
        out = np.zeros((len(queries), n), dtype=np.float32)
        if not queries:
            return out
        kind, w = self.config["kind"], float(self.config["weight"])
        if self.dense:
            q = self.embed(queries) if embeddings is None else embeddings
            sims = q @ self.key_emb.T                                               # (Q, M)
            best = torch.full((len(queries), n), -1.0)
            best.scatter_reduce_(1, self.key_entry.expand(len(queries), -1), sims, reduce="amax")
            out = best.numpy().astype(np.float32)
        if kind == "bm25":
            out = self.bm25.scores(queries)
        elif kind == "hybrid":
            b = self.bm25.scores(queries)
            out = (1 - w) * out + w * b / (b + _B_HALF)
        return out

    def answer(self, queries: list[str], k: int = 3) -> list[dict[str, Any]]:
        """The top ``k`` entries per question, and whether the retriever abstains (best score
        below ``threshold``)."""
        s = self.scores(queries)
        k = min(k, s.shape[1])
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        t = self.config["threshold"]
        res = []
        for row, idx in enumerate(top):
            best = float(s[row, idx[0]])
            res.append({"abstained": t is not None and best < t,
                        "answers": [{"id": self.ids[j], "question": self.questions[j], "answer": self.answers[j],
                                     "score": float(s[row, j])} for j in idx]})
        return res

    # -- an artifact -------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What the artifact stores: the keys' embeddings and owners, and the LoRA adapters."""
        state = {"key_emb": self.key_emb.contiguous(), "key_entry": self.key_entry.contiguous()}
        state.update({f"adapter.{k}": v.contiguous() for k, v in self._adapters.items()})
        return state

    def get_config(self) -> dict[str, Any]:
        return dict(self.config)

    def preprocessing(self) -> dict[str, Any]:
        """What rebuilds this retriever besides its tensors (``preprocessing.json``)."""
        return {"retriever": self.get_config(), "input": "question", "ids": self.ids, "questions": self.questions,
                "answers": self.answers, "example_keys": [[q, e] for q, e in self.example_keys]}

    @classmethod
    def from_artifact(cls, pre: dict[str, Any], state: dict[str, torch.Tensor]) -> Retriever:
        """Rebuild from ``preprocessing.json`` and the weights (adapters merged into the encoder)."""
        r = cls(pre["retriever"], pre["ids"], pre["questions"], pre["answers"],
                [(q, int(e)) for q, e in pre.get("example_keys", [])])
        r.key_emb, r.key_entry = state["key_emb"], state["key_entry"]
        adapters = {k.removeprefix("adapter."): v for k, v in state.items() if k.startswith("adapter.")}
        if r.dense:
            if r.config["lora"]:
                r._adapters = adapters
                tok, model = _lora_backbone(r.config["encoder"], r.config["lora"], adapters)
                r.attach_encoder(model.merge_and_unload(), tok)
            else:
                r.attach_encoder()
        return r


def _lora_backbone(encoder: str, lora: dict[str, Any], adapters: dict[str, torch.Tensor] | None):
    """(tokenizer, peft model) with LoRA adapters on every transformer linear layer."""
    import warnings

    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    tokenizer, backbone = _load_backbone(encoder)
    cfg = LoraConfig(r=int(lora["r"]), lora_alpha=float(lora["alpha"]), lora_dropout=0.0,
                     target_modules=_LORA_TARGETS, bias="none")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        model = get_peft_model(backbone, cfg)
    if adapters:
        set_peft_model_state_dict(model, adapters)
    return tokenizer, model


def fine_tune(retriever: Retriever, pairs: list[tuple[str, int]], *, epochs: int = 8, lr: float = 5e-4,
              batch_size: int = 32, r: int = 8, seed: int = 0, start: dict[str, torch.Tensor] | None = None,
              hard_negatives: bool = True, null_score: float = 0.3,
              time_left: Callable[[], float] | None = None, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fine-tune ``retriever``'s encoder on (customer question, entry index) pairs, in place;
    entry index -1 marks a question no entry answers.

    Contrastive: each question's entry text (its question, its answer, or both, by ``fields``)
    is its positive. An FAQ of up to :data:`ALL_ENTRIES_UP_TO` entries has every other entry as
    a negative of every question (a softmax over the whole FAQ); a larger one uses the
    multiple-negatives ranking loss (the other entries in the batch are the negatives, repeats
    masked out) and, with ``hard_negatives``, each question's most similar wrong entry (by the
    starting encoder) joins the batch as a negative too. When some questions are answered by no
    entry, "none" is one more candidate with the fixed cosine ``null_score`` (the abstention
    threshold's neighbourhood): those questions learn to score below it, the others above. LoRA
    adapters (rank ``r``) on every linear layer; ``start`` continues from a previous fine-tune's
    adapters. Then the keys are embedded with the tuned encoder. Returns the training record.
    """
    from peft import get_peft_model_state_dict

    if not pairs:
        raise InputError("fine-tuning: no (question, entry) pairs; expected example questions or feedback")
    cfg = retriever.config
    lora = {"r": r, "alpha": 2 * r}
    if start:
        lora = dict(cfg.get("lora") or lora)
    torch.manual_seed(seed)
    tokenizer, model = _lora_backbone(cfg["encoder"], lora, start)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    texts = [entry_text(q, a, cfg["fields"])
             for q, a in zip(retriever.questions, retriever.answers, strict=True)]
    rng = np.random.default_rng(seed)
    steps_per_epoch = max(1, math.ceil(len(pairs) / batch_size))
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, total // 10))
                                              * max(0.0, (total - s) / total))
    t0, losses, done = time.perf_counter(), [], 0

    def embed(batch: list[str]) -> torch.Tensor:
        enc = tokenizer(batch, truncation=True, max_length=cfg["max_length"], padding=True, return_tensors="pt",
                        return_token_type_ids=False)
        hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        return F.normalize(_mean_pool(hidden, enc["attention_mask"]), dim=1)

    # Hard negatives: each question's most similar wrong entry under the starting encoder, so the
    # loss also separates the entries it confuses, not only random ones.
    every_entry = len(texts) <= ALL_ENTRIES_UP_TO
    with_null = any(e < 0 for _, e in pairs)
    hard = np.zeros(len(pairs), dtype=np.int64)
    if hard_negatives and not every_entry and len(texts) > 1:
        model.eval()
        with torch.no_grad():
            ent = torch.cat([embed(texts[i:i + 64]) for i in range(0, len(texts), 64)])
            qs = torch.cat([embed([t for t, _ in pairs[i:i + 64]]) for i in range(0, len(pairs), 64)])
            sims = qs @ ent.T
            own = [(i, e) for i, (_, e) in enumerate(pairs) if e >= 0]
            sims[[i for i, _ in own], [e for _, e in own]] = -2.0
            hard = sims.argmax(dim=1).numpy()
        model.train()
    stopped = "epochs"
    for epoch in range(epochs):
        order = rng.permutation(len(pairs))
        for s in range(0, len(order), batch_size):
            rows = order[s:s + batch_size]
            chunk = [pairs[i] for i in rows]
            if len(chunk) < 2:
                continue
            owners = [e for _, e in chunk]
            if every_entry:  # a small FAQ: every entry is a candidate of every question
                cand = list(range(len(texts)))
            else:  # the batch's entries, and each question's hard negative
                cand = list(dict.fromkeys([e for e in owners if e >= 0]
                                          + ([int(h) for h in hard[rows]] if hard_negatives else [])))
            if not cand:
                continue
            pos = {e: j for j, e in enumerate(cand)}
            q = embed([t for t, _ in chunk])
            logits = 20.0 * q @ embed([texts[e] for e in cand]).T          # scale 20, as sentence-transformers
            if with_null:  # "no entry answers it" competes as one more candidate at a fixed cosine
                logits = torch.cat([logits, torch.full((len(chunk), 1), 20.0 * null_score)], dim=1)
            target = torch.tensor([pos[e] if e >= 0 else len(cand) for e in owners])
            loss = F.cross_entropy(logits, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            done += 1
        if say:
            say(f"[fine-tune] epoch {epoch + 1}/{epochs}: loss {np.mean(losses[-steps_per_epoch:]):.4f}")
        if time_left is not None and time_left() <= 0:
            stopped = "time budget"
            break
    model.eval()
    adapters = {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    retriever.config["lora"] = lora
    retriever._adapters = adapters
    retriever.attach_encoder(model.merge_and_unload(), tokenizer)
    retriever.index()
    return {"seconds": round(time.perf_counter() - t0, 2), "steps": done,
            "negatives": "every entry" if every_entry else "in batch" + (" + hard" if hard_negatives else ""),
            "out_of_scope": sum(e < 0 for _, e in pairs), "epochs": epoch + 1, "pairs": len(pairs),
            "final_loss": float(np.mean(losses[-steps_per_epoch:])) if losses else None, "stopped": stopped,
            "lora_r": lora["r"], "lr": lr, "batch_size": batch_size}
