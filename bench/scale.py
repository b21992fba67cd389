"""Scaling benchmark: the candidate search and a final fit on a real two-node Ray cluster against
the local backend, same machine, same run.

The cluster is the tests' (tests/ray_cluster.py): a head and a worker node on 127.0.0.2, one CPU
each, in a loopback-only network namespace (needs root). The measurements run inside that
namespace; this script starts the cluster, runs itself there, prints the tables and stops it.

1. trials per minute: the same search (``CandidateSearch``: one family, N trials of a few epochs
   on the seed case's pixels) with the local backend (trials one after another in this process,
   the baseline), on Ray with one trial at a time, and on Ray with two at once (one per node).
2. DDP parity: the seed-case CNN's final fit, local (``LocalBackend.fit``, the baseline) against a
   two-worker Ray Train ``TorchTrainer`` fit (``RayBackend.fit``): same recipe, same effective
   batch; test accuracy and final training loss side by side.

    python bench/scale.py [--trials 8] [--family cnn] [--epochs 3] [--fit-epochs 12]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from machine import describe, load  # noqa: E402


def _seed_case():
    from modelloop.data.dataset import prepare_dataset
    from modelloop.data.transforms import Normalizer
    from modelloop.spec import DataSpec

    ds = prepare_dataset(DataSpec(source="builtin:seed-case"))
    norm = Normalizer().fit(ds.splits["train"][0])
    return {k: (norm.transform(x), y) for k, (x, y) in ds.splits.items()}, len(ds.class_names)


def _search(backend, splits, classes, family: str, trials: int, epochs: int, storage: Path) -> dict:
    from modelloop.select.search import CandidateSearch

    x, y = splits["train"]
    base = {"input_shape": list(x.shape[1:]), "num_classes": classes}
    t = time.perf_counter()
    res = CandidateSearch([family], trials, epochs, timeout_s=3600, seed=0, backend=backend,
                          study_name=f"bench-{family}").run(splits["train"], splits["val"], base, storage_path=storage)
    seconds = time.perf_counter() - t
    import statistics

    return {"seconds": seconds, "trials": len(res.leaderboard), "per_min": 60 * len(res.leaderboard) / seconds,
            "fit_s": statistics.median([r["seconds"] for r in res.leaderboard if r["state"] == "complete"] or [0.0]),
            "best": res.best_val_score, "pruned": sum(r["state"] == "pruned" for r in res.leaderboard),
            "nodes": len({r.get("node") for r in res.leaderboard if r.get("node")}), "load": load()}


def _fit(backend, splits, classes, epochs: int) -> dict:
    from modelloop.backends import FitJob
    from modelloop.evaluate.metrics import classification_metrics  # noqa: F401 (kept for parity with runs)
    from modelloop.models import batched_logits
    from modelloop.train import TrainConfig

    x, y = splits["train"]
    job = FitJob({"family": "cnn", "input_shape": list(x.shape[1:]), "num_classes": classes,
                  "params": {"width": 32, "dropout": 0.25, "lr": 2e-3, "weight_decay": 1e-4}},
                 splits["train"], splits["val"],
                 training=TrainConfig(max_epochs=epochs, patience=epochs, batch_size=64, shift=2), seed=0)
    t = time.perf_counter()
    fit = backend.fit(job)
    seconds = time.perf_counter() - t
    xt, yt = splits["test"]
    acc = float((batched_logits(fit.model, xt).argmax(1) == yt).float().mean())
    return {"seconds": seconds, "test_accuracy": acc, "final_train_loss": fit.history[-1]["train_loss"],
            "best_val": fit.best_val_score, "workers": fit.result.workers, "precision": fit.result.precision,
            "load": load()}


def inner(args) -> None:
    """The measurements, inside the cluster's namespace: one JSON object on stdout."""
    from modelloop.backends import LocalBackend, RayBackend
    from modelloop.spec import ComputeSpec

    splits, classes = _seed_case()
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    out: dict = {"machine": describe()}

    def ray(workers: int) -> RayBackend:
        return RayBackend(ComputeSpec(backend="ray", address=args.address, workers=workers), storage=work / "ray")

    ray(2).connect()
    out["search"] = {
        "local": _search(LocalBackend(), splits, classes, args.family, args.trials, args.epochs, work / "l.db"),
        "ray-1": _search(ray(1), splits, classes, args.family, args.trials, args.epochs, work / "r1.db"),
        "ray-2": _search(ray(2), splits, classes, args.family, args.trials, args.epochs, work / "r2.db"),
    }
    out["fit"] = {"local": _fit(LocalBackend(), splits, classes, args.fit_epochs),
                  "ray-1": _fit(ray(1), splits, classes, args.fit_epochs),
                  "ray-2": _fit(ray(2), splits, classes, args.fit_epochs)}
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--family", default="cnn")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--fit-epochs", type=int, default=12)
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--address", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        inner(args)
        return
    from tests.ray_cluster import RayCluster

    print(f"machine: {describe()}; load average before {load()}", flush=True)
    cluster = RayCluster()
    try:
        proc = cluster.popen([sys.executable, __file__, "--inner", "--address", cluster.address,
                              "--trials", str(args.trials), "--family", args.family, "--epochs", str(args.epochs),
                              "--fit-epochs", str(args.fit_epochs)], stdout=subprocess.PIPE, text=True)
        stdout, _ = proc.communicate(timeout=3600)
    finally:
        cluster.stop()
    if proc.returncode != 0:
        raise SystemExit(f"the measurements failed (exit {proc.returncode})")
    res = json.loads(stdout.strip().splitlines()[-1])
    s = res["search"]
    print(f"\n1. search: {args.trials} trials of {args.family}, {args.epochs} epochs each, seed case "
          f"(2 nodes x 1 CPU on 127.0.0.2)")
    print(f"{'backend':<26}{'seconds':>9}{'trials/min':>12}{'vs local':>10}{'fit s/trial':>12}{'pruned':>8}"
          f"{'nodes':>7}{'best val':>10}  load avg")
    for name, label in (("local", "local (baseline)"), ("ray-1", "Ray Tune, 1 at a time"),
                        ("ray-2", "Ray Tune, 2 at a time")):
        r = s[name]
        print(f"{label:<26}{r['seconds']:>9.1f}{r['per_min']:>12.1f}{r['per_min'] / s['local']['per_min']:>9.2f}x"
              f"{r['fit_s']:>12.2f}{r['pruned']:>8}{r['nodes'] or 1:>7}{r['best']:>10.3f}  {r['load']}")
    print(f"Ray, 2 at a time vs 1 at a time: {s['ray-2']['per_min'] / s['ray-1']['per_min']:.2f}x. "
          "fit s/trial: the median completed trial's own fit (what a trial costs without Tune's scheduling and "
          "process start).")
    f = res["fit"]
    print(f"\n2. final fit: seed-case CNN, {args.fit_epochs} epochs, batch 64 (effective)")
    print(f"{'backend':<30}{'workers':>8}{'seconds':>9}{'test acc':>10}{'final train loss':>18}{'best val':>10}"
          f"{'precision':>11}  load avg")
    for name, label in (("local", "local (baseline)"), ("ray-1", "Ray Train TorchTrainer"),
                        ("ray-2", "Ray Train TorchTrainer, DDP")):
        r = f[name]
        print(f"{label:<30}{r['workers']:>8}{r['seconds']:>9.1f}{r['test_accuracy']:>10.3f}"
              f"{r['final_train_loss']:>18.4f}{r['best_val']:>10.3f}{r['precision']:>11}  {r['load']}")
    print(f"\nmachine: {res['machine']}; load average after {load()}")


if __name__ == "__main__":
    if os.environ.get("RAY_USAGE_STATS_ENABLED") is None:
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    main()
