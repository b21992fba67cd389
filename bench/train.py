"""Training benchmark: modelloop's Trainer against a plain PyTorch loop (and scikit-learn), same machine, same run.

Model: the SmallCNN ``build_model({"family": "cnn", "input_shape": [1, 28, 28], "num_classes": 10,
"params": {"width": 32}})``, same initial weights for every torch contender. Data: ``builtin:mnist784``
split as modelloop splits it (``prepare_dataset``, default seed: 3,500 train / 750 val / 750 test),
normalized with a Normalizer fit on the training split.

The baseline is the loop a team writes first: fp32, NCHW, default thread count,
``DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)``, Adam, lr 1e-3.
modelloop's Trainer runs with its defaults (batch 64, lr 1e-3, AdamW, hardware choices measured).

Parts (each a few minutes on 2 busy cores):

1. throughput: training images/s over a fixed number of epochs (whole ``fit`` wall time for
   modelloop: its probe and per-epoch validation are included, nothing is subtracted), in
   ``--repeats`` rounds of three contenders run one after the other (so a burst of load hits each
   alike): the plain loop; the Trainer measuring its plan (no cached plan: what the first fit of a
   model shape on a machine pays); the Trainer again, its plan read from the cache (every later fit
   of that shape within the cache's lifetime, in this process or another). Each row shows the
   load average before it ("busy" above 2, on these 2-core machines) and each Trainer row where its
   wall time went (``TrainResult.timings``). The cache folder is a temporary one for the run, so a
   plan cached by an earlier run never makes a "measured" row look cheaper. Lazy imports that the
   first optimizer in a process pays for (torch._dynamo, 1-3 s) are paid before anything is timed.
2. accuracy: time until test accuracy (evaluated after every epoch, evaluation time included)
   first reaches the target, for modelloop, the plain loop and scikit-learn's MLPClassifier
   (hidden (256,), one ``partial_fit`` per epoch); each stops before an epoch that would end past
   the time cap (or at the epoch cap) and reports what it reached.
3. ablation: one choice at a time, training steps only, rounds of 256 images interleaved across
   the variants (median reported); the plain loop on one thread (the data path alone); and
   ``torch.compile`` with a cold kernel cache (its compile time reported apart).

    python bench/train.py [--parts throughput,accuracy,ablation] [--epochs 2] [--repeats 2] [--cap-s 200]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import describe  # noqa: E402

from modelloop.data.dataset import prepare_dataset
from modelloop.data.transforms import Normalizer
from modelloop.models import batched_logits, build_model
from modelloop.spec import DataSpec
from modelloop.train import fast
from modelloop.train.trainer import TrainConfig, Trainer, TrainResult

CONFIG = {"family": "cnn", "input_shape": [1, 28, 28], "num_classes": 10, "params": {"width": 32}}
LR, BATCH = 1e-3, 64


class _Reached(Exception):
    """Raised from an epoch callback to stop training once the target accuracy is reached."""


def load() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    ds = prepare_dataset(DataSpec(source="builtin:mnist784"))
    (xtr, ytr), (xte, yte) = ds.splits["train"], ds.splits["test"]
    norm = Normalizer().fit(xtr)
    return (norm.transform(xtr), ytr), (norm.transform(xte), yte)


def fresh_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(CONFIG)


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (batched_logits(model, x).argmax(1) == y).float().mean().item()


def plain_fit(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int,
              on_epoch: Callable[[int], None] | None = None) -> None:
    """The baseline loop: fp32, NCHW, default threads, DataLoader over a TensorDataset, Adam."""
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    for epoch in range(epochs):
        model.train()
        for xb, yb in loader:
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
        if on_epoch is not None:
            on_epoch(epoch)


def load_note() -> str:
    return f"load avg {os.getloadavg()[0]:.1f}"


def _busy(load: float) -> str:
    return f"{load:.1f} busy" if load > 2 else f"{load:.1f} quiet"


def warm_imports() -> None:
    """The first optimizer step in a process imports torch._dynamo (1-3 s); pay it before any timing."""
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([w])
    w.sum().backward()
    opt.step()


def part_throughput(train, test, epochs: int, repeats: int) -> list[str]:
    x, y = train
    n = len(y) * epochs
    names = ["plain", "measured", "cached"]
    runs: dict[str, list[tuple]] = {k: [] for k in names}
    cache_dir = tempfile.mkdtemp(prefix="bench-plans-")
    before_dir = os.environ.get("MODELLOOP_CACHE_DIR")
    os.environ["MODELLOOP_CACHE_DIR"] = cache_dir
    try:
        for _ in range(repeats):
            for kind in names:
                m = fresh_model()
                load = os.getloadavg()[0]
                if kind == "plain":
                    t = time.perf_counter()
                    plain_fit(m, x, y, epochs)
                    secs = time.perf_counter() - t
                    runs[kind].append((secs, accuracy(m, *test), load, None))
                    continue
                if kind == "measured":
                    fast.clear_plan_cache()
                t = time.perf_counter()
                cfg = TrainConfig(max_epochs=epochs, patience=epochs, batch_size=BATCH, lr=LR)
                r = Trainer(cfg).fit(m, train, test)
                secs = time.perf_counter() - t
                runs[kind].append((secs, accuracy(m, *test), load, r))
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
        if before_dir is None:
            os.environ.pop("MODELLOOP_CACHE_DIR", None)
        else:
            os.environ["MODELLOOP_CACHE_DIR"] = before_dir

    plain_ips = statistics.median(n / s for s, *_ in runs["plain"])
    labels = {"plain": f"plain PyTorch loop (fp32, NCHW, {torch.get_num_threads()} threads, DataLoader)",
              "measured": "modelloop Trainer, plan measured (first fit of this shape)",
              "cached": "modelloop Trainer, plan from the cache (later fits)"}
    out = [f"Training throughput, SmallCNN width 32, {len(y)} images x {epochs} epochs, batch {BATCH}, "
           f"{repeats} round(s) of the three contenders in turn; {describe()}:", "",
           "| round | trainer | plan | wall s | images/s | test acc | vs plain (median) | load avg before |",
           "|---|---|---|---|---|---|---|---|"]
    for i in range(repeats):
        for kind in names:
            secs, acc, load, r = runs[kind][i]
            plan = _plan(r) if r is not None else "fp32, NCHW"
            out.append(f"| {i + 1} | {labels[kind]} | {plan} | {secs:.1f} | {n / secs:.0f} | {acc:.4f} | "
                       f"{n / secs / plain_ips:.2f}x | {_busy(load)} |")
    out.append("")
    medians = {k: statistics.median(n / s for s, *_ in runs[k]) for k in names}
    out.append("Median images/s: " + "; ".join(f"{k} {v:.0f} ({v / plain_ips:.2f}x)" for k, v in medians.items()))
    out.append("")
    out.append("Where each Trainer fit's wall time went (s; steps include data slicing and augmentation):")
    out.append("")
    parts = ["probe", "steps", "validation", "state_copies", "checkpoint", "setup"]
    out.append("| round | trainer | " + " | ".join(parts) + " | other | total | steps-only images/s | probe s/step |")
    out.append("|---|---|" + "---|" * (len(parts) + 4))
    for i in range(repeats):
        for kind in ("measured", "cached"):
            secs, _, _, r = runs[kind][i]
            tm = r.timings
            other = secs - sum(tm[k] for k in parts)
            out.append(f"| {i + 1} | {kind} | " + " | ".join(f"{tm[k]:.2f}" for k in parts)
                       + f" | {other:.2f} | {secs:.2f} | {r.examples_per_s:.0f} | {r.probe or '-'} |")
    return out


def _plan(r: TrainResult) -> str:
    return f"{r.precision}, {r.threads} thread{'s' if r.threads != 1 else ''}, " \
           f"{'channels_last' if r.channels_last else 'NCHW'}, {r.plan_source}"


def part_accuracy(train, test, target: float, cap_s: float, cap_epochs: int) -> list[str]:
    x, y = train
    rows = []

    # modelloop: the test split is its validation set, so val_accuracy after each epoch is test accuracy.
    m = fresh_model()
    seen: list[tuple[float, float, int]] = []
    t = time.perf_counter()

    def ml_epoch(epoch: int, row: dict[str, float]) -> None:
        seen.append((time.perf_counter() - t, row["val_accuracy"], epoch + 1))
        if row["val_accuracy"] >= target or _past_cap(seen, cap_s):
            raise _Reached

    try:
        Trainer(TrainConfig(max_epochs=cap_epochs, patience=cap_epochs, batch_size=BATCH, lr=LR)).fit(
            m, train, test, on_epoch=ml_epoch)
    except _Reached:
        pass
    rows.append(("modelloop Trainer", seen))

    m = fresh_model()
    seen_plain: list[tuple[float, float, int]] = []
    t = time.perf_counter()

    def plain_epoch(epoch: int) -> None:
        seen_plain.append((time.perf_counter() - t, accuracy(m, *test), epoch + 1))
        if seen_plain[-1][1] >= target or _past_cap(seen_plain, cap_s):
            raise _Reached

    try:
        plain_fit(m, x, y, cap_epochs, on_epoch=plain_epoch)
    except _Reached:
        pass
    rows.append((f"plain PyTorch loop (fp32, NCHW, {torch.get_num_threads()} threads)", seen_plain))

    from sklearn.neural_network import MLPClassifier

    xs, ys = x.flatten(1).numpy(), y.numpy()
    xts, yts = test[0].flatten(1).numpy(), test[1].numpy()
    clf = MLPClassifier(hidden_layer_sizes=(256,), early_stopping=False, learning_rate_init=LR, random_state=0)
    seen_sk: list[tuple[float, float, int]] = []
    t = time.perf_counter()
    for epoch in range(cap_epochs):
        clf.partial_fit(xs, ys, classes=np.arange(10))
        seen_sk.append((time.perf_counter() - t, float((clf.predict(xts) == yts).mean()), epoch + 1))
        if seen_sk[-1][1] >= target or _past_cap(seen_sk, cap_s):
            break
    rows.append(("scikit-learn MLPClassifier (256,), partial_fit per epoch", seen_sk))

    plain_time = _time_to(rows[1][1], target)
    out = [f"Time to {target:.0%} test accuracy on builtin:mnist784 ({len(test[1])} test images), batch {BATCH} for "
           f"both torch loops, cap {cap_s:.0f} s or {cap_epochs} epochs:", "",
           "| trainer | time to target s | epochs | best test acc (epoch) | vs plain loop |", "|---|---|---|---|---|"]
    for name, hist in rows:
        reach = _time_to(hist, target)
        best = max(hist, key=lambda h: h[1]) if hist else (0.0, 0.0, 0)
        when = f"{reach:.1f}" if reach is not None else f"not reached in {hist[-1][0]:.0f} s"
        epochs = next((h[2] for h in hist if h[1] >= target), len(hist))
        if reach is not None and plain_time:
            ratio = f"{reach / plain_time:.2f}x"
        elif reach is not None and rows[1][1]:  # the plain loop never got there: a bound
            ratio = f"< {reach / rows[1][1][-1][0]:.2f}x"
        else:
            ratio = "-"
        out.append(f"| {name} | {when} | {epochs} | {best[1]:.4f} ({best[2]}) | {ratio} |")
    out.append("")
    out.append("Per-epoch (seconds, test accuracy): " + "; ".join(
        f"{name.split(' (')[0]}: " + ", ".join(f"{s:.0f}s {a:.3f}" for s, a, _ in hist) for name, hist in rows))
    return out


def _past_cap(hist: list[tuple[float, float, int]], cap_s: float) -> bool:
    """True when another epoch as long as the last one would end past the cap."""
    last = hist[-1][0] - (hist[-2][0] if len(hist) > 1 else 0.0)
    return hist[-1][0] + last > cap_s


def _time_to(hist: list[tuple[float, float, int]], target: float) -> float | None:
    return next((s for s, a, _ in hist if a >= target), None)


def part_ablation(train, compile_: bool, rounds: int) -> list[str]:
    """Each variant trains on the same 256 images per round; rounds interleave the variants so that
    load from other processes hits them alike; the table shows each variant's median over rounds
    (a first, untimed round warms every variant up)."""
    x, y = train[0][:256], train[1][:256]
    n = len(y)
    cases: list[tuple[str, Callable[[], float]]] = []

    def trainer_case(**kw) -> Callable[[], float]:
        def run() -> float:
            cfg = TrainConfig(max_epochs=1, patience=1, **{"batch_size": BATCH, "lr": LR, **kw})
            return Trainer(cfg).fit(fresh_model(), (x, y), (x[:64], y[:64])).examples_per_s
        return run

    for name, kw in [
        ("Trainer fp32, 2 threads, NCHW (the baseline's choices)", dict(precision="fp32", threads=2,
                                                                          channels_last=False)),
        ("Trainer fp32, 1 thread, NCHW", dict(precision="fp32", threads=1, channels_last=False)),
        ("Trainer fp32, 1 thread, channels_last (what auto chose)", dict(precision="fp32", threads=1,
                                                                          channels_last=True)),
        ("Trainer bf16 autocast, 1 thread, channels_last", dict(precision="bf16", threads=1, channels_last=True)),
        ("Trainer bf16 autocast, 2 threads, channels_last", dict(precision="bf16", threads=2, channels_last=True)),
        ("Trainer fp32, 1 thread, channels_last, batch 256 (lr x4)",
         dict(precision="fp32", threads=1, channels_last=True, batch_size=256, lr=4 * LR)),
    ]:
        cases.append((name, trainer_case(**kw)))

    def one_thread(fn: Callable[[], float]) -> Callable[[], float]:
        def run() -> float:
            before = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                return fn()
            finally:
                torch.set_num_threads(before)
        return run

    def plain_once() -> float:
        t = time.perf_counter()
        plain_fit(fresh_model(), x, y, 1)
        return n / (time.perf_counter() - t)

    cases.append(("plain loop (DataLoader), fp32, 1 thread, NCHW", one_thread(plain_once)))

    compile_note = ""
    if compile_:
        # A cold compile, as a user's first run pays it: no kernels from an earlier run on disk.
        cache = tempfile.mkdtemp(prefix="bench-inductor-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        m = fresh_model().to(memory_format=torch.channels_last)
        compiled = torch.compile(m)
        opt = torch.optim.AdamW(m.parameters(), lr=LR)
        xcl = x.contiguous(memory_format=torch.channels_last)

        def compiled_epoch() -> float:
            t = time.perf_counter()
            for i in range(0, n, BATCH):
                loss = F.cross_entropy(compiled(xcl[i : i + BATCH]), y[i : i + BATCH])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            return n / (time.perf_counter() - t)

        t = time.perf_counter()
        one_thread(compiled_epoch)()
        compile_note = f" (compiling took {time.perf_counter() - t:.0f} s before the rounds, not counted here)"
        cases.append(("torch.compile(model), fp32, 1 thread, channels_last, plain step", one_thread(compiled_epoch)))

    results: dict[str, list[float]] = {name: [] for name, _ in cases}
    for rnd in range(rounds + 1):
        for name, fn in cases:
            ips = fn()
            if rnd > 0:
                results[name].append(ips)
    if compile_:
        shutil.rmtree(cache, ignore_errors=True)
    base = statistics.median(results[cases[0][0]])
    out = [f"Ablation: one choice at a time, training steps only, {n} images per round, median of {rounds} "
           f"interleaved rounds{compile_note}:", "",
           "| variant | images/s (median) | min-max | vs first row |", "|---|---|---|---|"]
    for name, vals in results.items():
        med = statistics.median(vals)
        out.append(f"| {name} | {med:.0f} | {min(vals):.0f}-{max(vals):.0f} | {med / base:.2f}x |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="throughput,accuracy,ablation")
    ap.add_argument("--epochs", type=int, default=2, help="epochs for the throughput part")
    ap.add_argument("--repeats", type=int, default=2, help="rounds of the throughput part's three contenders")
    ap.add_argument("--target", type=float, default=0.97)
    ap.add_argument("--cap-s", type=float, default=200.0, help="time cap per contender in the accuracy part")
    ap.add_argument("--cap-epochs", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per variant in the ablation")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile row of the ablation")
    ap.add_argument("-v", "--verbose", action="store_true", help="show the Trainer's logs on stderr")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    parts = args.parts.split(",")
    train, test = load()
    warm_imports()
    print(f"torch {torch.__version__}, {describe()}, default threads {torch.get_num_threads()}, "
          f"{load_note()} at start\n", flush=True)
    if "throughput" in parts:
        print("\n".join(part_throughput(train, test, args.epochs, args.repeats)) + "\n", flush=True)
    if "accuracy" in parts:
        print("\n".join(part_accuracy(train, test, args.target, args.cap_s, args.cap_epochs)) + "\n", flush=True)
    if "ablation" in parts:
        print("\n".join(part_ablation(train, not args.no_compile, args.rounds)) + "\n", flush=True)


if __name__ == "__main__":
    main()
