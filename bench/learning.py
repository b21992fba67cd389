"""Learning from unlabelled traffic: feedback-only retraining vs semi-supervised retraining.

The founding case (``builtin:seed-case``: even vs odd 28x28 digits). v1 is trained by the loop
(``Project.run``, the CNN, one search trial) on the 1,000 labelled images. Then 3,000 requests of
the case's live traffic (``seed_case_traffic()``, shuffled with a fixed seed) are answered by v1
and logged in the project's feedback store exactly as the server logs them (``prediction_row``),
and 100 of them get their true label as feedback. Two copies of that project are retrained by the
loop (``Project.retrain``), side by side in this run: ``feedback.semi_supervised: off`` (the
baseline: the training split plus the labelled feedback) and ``on`` (the same, plus the 2,900
logged inputs without feedback as pseudo-labelled inputs). Every version is scored on the other
900 live images, which no model saw in any form.

    .venv/bin/python bench/learning.py [--threshold 0.95] [--ratio 2] [--epochs 30] [--patience 6]

Prints a markdown table (accuracy with its Wilson interval, the change against v1, fit seconds and
the load average beside each figure) and the semi-supervised version's record.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, load  # noqa: E402

from modelloop.data.builtin import seed_case_traffic  # noqa: E402
from modelloop.feedback import FeedbackStore, prediction_row  # noqa: E402
from modelloop.feedback.store import wilson_interval  # noqa: E402
from modelloop.project import Project  # noqa: E402
from modelloop.registry.store import open_registry  # noqa: E402
from modelloop.settings import ProjectPaths  # noqa: E402

NAMES = ["even", "odd"]


def _edit(proj: Path, **sections) -> None:
    path = proj / "modelloop.yaml"
    spec = yaml.safe_load(path.read_text())
    for name, values in sections.items():
        spec.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(spec))


def _accuracy(proj: Path, version: str, x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    model = open_registry(ProjectPaths(proj).registry).load(version, backend="torch")
    pred = model.predict_proba(torch.from_numpy(x.astype(np.float32))).numpy().argmax(1)
    k = int((pred == y).sum())
    low, high = wilson_interval(k, len(y))
    return k / len(y), low, high


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threshold", type=float, default=0.95)
    ap.add_argument("--ratio", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--patience", type=int, default=6, help="training.patience: epochs without a better "
                    "validation score before the learning rate is annealed and training stops")
    ap.add_argument("--logged", type=int, default=3000)
    ap.add_argument("--labelled", type=int, default=100)
    ap.add_argument("--keep", help="leave the projects in this folder")
    args = ap.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-learning-"))
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        v1 = root / "v1"
        shutil.rmtree(v1, ignore_errors=True)
        Project.init(v1, task="image-classification", data="builtin:seed-case")
        _edit(v1, selection={"candidates": ["cnn"], "trials": 1, "distill": False},
              training={"max_epochs": args.epochs, "patience": args.patience}, serving={"backends": ["torch"]})
        t = time.perf_counter()
        res = Project(v1).run()
        rows.append(("v1 (1,000 labelled images)", "v1", v1, time.perf_counter() - t, load()))

        x, y = seed_case_traffic()
        order = np.random.default_rng(0).permutation(len(y))
        logged, unseen = order[: args.logged], order[args.logged:]
        model = open_registry(ProjectPaths(v1).registry).load(res["version"], backend="torch")
        probs = model.predict_proba(torch.from_numpy(x[logged].astype(np.float32))).numpy()
        store = FeedbackStore(ProjectPaths(v1).store_url(None))
        ids = [uuid.uuid4().hex for _ in logged]
        store.log_many([prediction_row(pid, res["version"], x[i], NAMES[int(p.argmax())],
                                       dict(zip(NAMES, map(float, p), strict=True)), 1.0)
                        for pid, i, p in zip(ids, logged, probs, strict=True)])
        for pid, i in zip(ids[: args.labelled], logged[: args.labelled], strict=True):
            store.add_feedback(pid, NAMES[int(y[i])])
        store.close()

        for mode, title in (("off", f"feedback only ({args.labelled} labelled)"),
                            ("on", f"+ pseudo-labels ({args.logged - args.labelled} unlabelled)")):
            proj = root / f"retrain-{mode}"
            shutil.rmtree(proj, ignore_errors=True)
            shutil.copytree(v1, proj)
            _edit(proj, feedback={"semi_supervised": mode, "pseudo_label_threshold": args.threshold,
                                  "unlabelled_ratio": args.ratio})
            t = time.perf_counter()
            out = Project(proj).retrain(force=True)
            rows.append((f"retrain, {title}", out["version"], proj, time.perf_counter() - t, load()))

        print("## Learning from unlabelled traffic\n")
        print(f"Command: `.venv/bin/python bench/learning.py --threshold {args.threshold} --ratio {args.ratio} "
              f"--epochs {args.epochs}`  ")
        print(f"Machine: {describe()}; torch threads {torch.get_num_threads()}, pid {os.getpid()}\n")
        print(f"Accuracy on the {len(unseen)} live images no model saw (Wilson 95% interval).\n")
        print("| model | accuracy | vs v1 | fit + evaluation s | load avg (1/5/15 min) after |")
        print("|---|---|---|---|---|")
        base = None
        for name, version, proj, seconds, avg in rows:
            acc, low, high = _accuracy(proj, version, x[unseen], y[unseen])
            base = acc if base is None else base
            delta = "(baseline)" if acc == base and version == "v1" else f"{100 * (acc - base):+.1f} pts"
            print(f"| {name} | {acc:.4f} ({low:.3f}-{high:.3f}) | {delta} | {seconds:.0f} | {avg} |")
        semi = open_registry(ProjectPaths(rows[-1][2]).registry).manifest(rows[-1][1])["semi_supervised"]
        print(f"\nSemi-supervised record (manifest `semi_supervised`): {semi}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
