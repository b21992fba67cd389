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
   modelloop: its probe and per-epoch validation are included, nothing is subtracted).
2. accuracy: time until test accuracy (evaluated after every epoch, evaluation time included)
   first reaches the target, for modelloop, the plain loop and scikit-learn's MLPClassifier
   (hidden (256,), one ``partial_fit`` per epoch); each stops at a time/epoch cap and reports
   what it reached.
3. ablation: one choice at a time, 1 epoch on 1,280 training images each, steady-state images/s
   of the training steps only; plus ``torch.compile`` (compile time reported separately).

    python bench/train.py [--parts throughput,accuracy,ablation] [--epochs 2] [--cap-s 200]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from modelloop.data.dataset import prepare_dataset
from modelloop.data.transforms import Normalizer
from modelloop.models import batched_logits, build_model
from modelloop.spec import DataSpec
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


def part_throughput(train, test, epochs: int) -> list[str]:
    x, y = train
    n = len(y) * epochs
    rows = []
    m = fresh_model()
    before = load_note()
    t = time.perf_counter()
    plain_fit(m, x, y, epochs)
    plain_s = time.perf_counter() - t
    rows.append((f"plain PyTorch loop (fp32, NCHW, {torch.get_num_threads()} threads, DataLoader)",
                 plain_s, n / plain_s, accuracy(m, *test), before))

    m = fresh_model()
    before = load_note()
    t = time.perf_counter()
    r = Trainer(TrainConfig(max_epochs=epochs, patience=epochs, batch_size=BATCH, lr=LR)).fit(m, train, test)
    ml_s = time.perf_counter() - t
    rows.append((f"modelloop Trainer ({_plan(r)})", ml_s, n / ml_s, r.best_val_accuracy, before))

    out = [f"Training throughput, SmallCNN width 32, {len(y)} images x {epochs} epochs, batch {BATCH}:", "",
           "| trainer | wall s | images/s | test acc | vs plain | load before |", "|---|---|---|---|---|---|"]
    for name, secs, ips, acc, note in rows:
        out.append(f"| {name} | {secs:.1f} | {ips:.0f} | {acc:.4f} | {ips / rows[0][2]:.2f}x | {note} |")
    out.append("")
    out.append(f"modelloop probe (median s/step): {r.probe}; steps-only throughput {r.examples_per_s:.0f} images/s")
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
        if row["val_accuracy"] >= target or seen[-1][0] >= cap_s:
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
        if seen_plain[-1][1] >= target or seen_plain[-1][0] >= cap_s:
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
        if seen_sk[-1][1] >= target or seen_sk[-1][0] >= cap_s:
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
        ratio = f"{reach / plain_time:.2f}x" if reach is not None and plain_time else "-"
        out.append(f"| {name} | {when} | {epochs} | {best[1]:.4f} ({best[2]}) | {ratio} |")
    out.append("")
    out.append("Per-epoch (seconds, test accuracy): " + "; ".join(
        f"{name.split(' (')[0]}: " + ", ".join(f"{s:.0f}s {a:.3f}" for s, a, _ in hist) for name, hist in rows))
    return out


def _time_to(hist: list[tuple[float, float, int]], target: float) -> float | None:
    return next((s for s, a, _ in hist if a >= target), None)


def part_ablation(train, compile_: bool) -> list[str]:
    x, y = train[0][:1280], train[1][:1280]
    cases = [
        ("fp32, 2 threads, NCHW (the baseline's choices)", dict(precision="fp32", threads=2, channels_last=False)),
        ("fp32, 1 thread, NCHW", dict(precision="fp32", threads=1, channels_last=False)),
        ("fp32, 1 thread, channels_last", dict(precision="fp32", threads=1, channels_last=True)),
        ("bf16 autocast, 1 thread, channels_last", dict(precision="bf16", threads=1, channels_last=True)),
        ("bf16 autocast, 2 threads, channels_last", dict(precision="bf16", threads=2, channels_last=True)),
        ("fp32, 1 thread, channels_last, batch 256 (lr x4)",
         dict(precision="fp32", threads=1, channels_last=True, batch_size=256, lr=4 * LR)),
    ]
    out = ["Ablation (1 epoch on 1,280 images, training steps only):", "",
           "| variant | images/s | vs first row | load before |", "|---|---|---|---|"]
    base = None
    for name, kw in cases:
        kw = {"batch_size": BATCH, "lr": LR, **kw}
        note = load_note()
        r = Trainer(TrainConfig(max_epochs=1, patience=1, **kw)).fit(fresh_model(), (x, y), (x[:64], y[:64]))
        base = base or r.examples_per_s
        out.append(f"| {name} | {r.examples_per_s:.0f} | {r.examples_per_s / base:.2f}x | {note} |")

    if compile_:
        with_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for label, compiled in (("eager", False), ("torch.compile", True)):
                m = fresh_model().to(memory_format=torch.channels_last)
                step_model = torch.compile(m) if compiled else m
                opt = torch.optim.AdamW(m.parameters(), lr=LR)
                xb_all = x.contiguous(memory_format=torch.channels_last)

                def step(i: int, sm=step_model, opt=opt, xb_all=xb_all) -> None:
                    sl = slice((i * BATCH) % 1280, (i * BATCH) % 1280 + BATCH)
                    loss = F.cross_entropy(sm(xb_all[sl]), y[sl])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()

                note = load_note()
                t = time.perf_counter()
                step(0)
                first = time.perf_counter() - t
                t = time.perf_counter()
                for i in range(1, 21):
                    step(i)
                ips = 20 * BATCH / (time.perf_counter() - t)
                out.append(f"| {label}, fp32, 1 thread, channels_last (first step {first:.1f} s) | {ips:.0f} | "
                           f"{ips / base:.2f}x | {note} |")
        finally:
            torch.set_num_threads(with_threads)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="throughput,accuracy,ablation")
    ap.add_argument("--epochs", type=int, default=2, help="epochs for the throughput part")
    ap.add_argument("--target", type=float, default=0.97)
    ap.add_argument("--cap-s", type=float, default=200.0, help="time cap per contender in the accuracy part")
    ap.add_argument("--cap-epochs", type=int, default=20)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile row of the ablation")
    ap.add_argument("-v", "--verbose", action="store_true", help="show the Trainer's logs on stderr")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    parts = args.parts.split(",")
    train, test = load()
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, default threads {torch.get_num_threads()}, "
          f"{load_note()} at start\n", flush=True)
    if "throughput" in parts:
        print("\n".join(part_throughput(train, test, args.epochs)) + "\n", flush=True)
    if "accuracy" in parts:
        print("\n".join(part_accuracy(train, test, args.target, args.cap_s, args.cap_epochs)) + "\n", flush=True)
    if "ablation" in parts:
        print("\n".join(part_ablation(train, not args.no_compile)) + "\n", flush=True)


if __name__ == "__main__":
    main()
