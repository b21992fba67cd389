"""Few-shot MNIST: EfficientNet-Lite0 transfer (ImageNet weights) vs models trained from scratch.

Same seeded split for every contender, from builtin:mnist784 (5,000 digits, 500 per class):
a fixed test set of 100 per class (1,000 images), a validation set of 10 per class (100 images,
used by every contender for early stopping) and a training pool of 50 per class, whose first 10 per
class are the 10-shot set. From scratch: linear / mlp / cnn from ``build_model`` on Normalizer'd pixels,
trained by the Trainer with random shifts of 2 px. Transfer: the frozen prefix runs once per image (at
each image size), its outputs are cached, and the suffix is trained by the same Trainer on the cache:
"frozen" = pooled 1280-d features + linear head; "finetune" = last blocks + head conv + linear head.
Shift augmentation for transfer happens before the prefix: ``--aug-copies`` shifted copies per training
image are run through the prefix too.

Prints markdown tables with ratios. Run: .venv/bin/python bench/fewshot.py
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from modelloop.data.builtin import load_builtin
from modelloop.data.transforms import Normalizer, random_shift
from modelloop.models import batched_logits, build_model, count_parameters
from modelloop.models.transfer import build_suffix, extract, transfer_parts
from modelloop.train.trainer import TrainConfig, Trainer

K = 10


def split(y: np.ndarray, seed: int, test_per_class: int = 100, val_per_class: int = 10, pool_per_class: int = 50):
    rng = np.random.default_rng(seed)
    test, val, pool = [], [], []
    for c in range(K):
        idx = rng.permutation(np.flatnonzero(y == c))
        test.append(idx[:test_per_class])
        val.append(idx[test_per_class : test_per_class + val_per_class])
        pool.append(idx[test_per_class + val_per_class : test_per_class + val_per_class + pool_per_class])
    return np.concatenate(test), np.concatenate(val), np.stack(pool)  # pool: (K, pool_per_class)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(1) == y).float().mean().item()


def scratch(family: str, xtr, ytr, xv, yv, xte, yte, epochs: int) -> dict:
    torch.manual_seed(0)
    params = {"width": 32} if family == "cnn" else {}
    model = build_model({"family": family, "input_shape": [1, 28, 28], "num_classes": K, "params": params})
    t = time.perf_counter()
    norm = Normalizer().fit(xtr)
    cfg = TrainConfig(max_epochs=epochs, patience=max(epochs // 4, 10), batch_size=32, lr=1e-3, shift=2, seed=0)
    Trainer(cfg).fit(model, (norm.transform(xtr), ytr), (norm.transform(xv), yv))
    secs = time.perf_counter() - t
    acc = accuracy(batched_logits(model, norm.transform(xte)), yte)
    return {"acc": acc, "train_s": secs, "params": count_parameters(model)}


def fit_suffix(suffix, ftr, ytr, fv, yv, fte, yte, lr: float, epochs: int) -> tuple[float, float]:
    cfg = TrainConfig(max_epochs=epochs, patience=max(epochs // 4, 10), batch_size=32, lr=lr, shift=0, seed=0)
    t = time.perf_counter()
    Trainer(cfg).fit(suffix, (ftr, ytr), (fv, yv))
    return accuracy(batched_logits(suffix, fte, batch_size=256), yte), time.perf_counter() - t


def shifted_copies(x: torch.Tensor, copies: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([random_shift(x.float(), 2, gen) for _ in range(copies)]) if copies else x[:0].float()


def time_layouts(prefix, x: torch.Tensor) -> tuple[float, float]:
    """ms per image of the prefix, channels_last weights vs the default layout: alternating, after a
    warm-up call each, best of 3 (the machine is shared, so the minimum is the least disturbed)."""
    out = {True: float("inf"), False: float("inf")}
    with torch.inference_mode():
        for rep in range(4):
            for cl in (True, False):
                prefix.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
                t = time.perf_counter()
                prefix(x if rep else x[:2])
                if rep:
                    out[cl] = min(out[cl], (time.perf_counter() - t) / len(x) * 1000)
    return out[True], out[False]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="224,128,96", help="image sizes for the prefix; the first is the main one")
    ap.add_argument("--shots", default="10,50")
    ap.add_argument("--finetune-blocks", type=int, default=2)
    ap.add_argument("--aug-copies", type=int, default=2, help="shifted copies per training image through the prefix")
    ap.add_argument("--finetune-lr", type=float, default=5e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    shots = [int(s) for s in args.shots.split(",")]

    data = load_builtin("mnist784")
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    test_idx, val_idx, pool = split(data.y, args.seed, pool_per_class=max(shots))
    xte, yte, xv, yv = x[test_idx], y[test_idx], x[val_idx], y[val_idx]
    train_sets = {n: torch.from_numpy(pool[:, :n].reshape(-1)) for n in shots}

    rows = []  # (shots, contender, acc, train_s, note)
    best_scratch = {}
    for n in shots:
        xtr, ytr = x[train_sets[n]], y[train_sets[n]]
        for fam in ("linear", "mlp", "cnn"):
            r = scratch(fam, xtr, ytr, xv, yv, xte, yte, args.epochs)
            rows.append((n, f"from scratch: {fam}", r["acc"], r["train_s"], f"{r['params']:,} params"))
            if r["acc"] > best_scratch.get(n, (-1,))[0]:
                best_scratch[n] = (r["acc"], fam)

    layout_lines = []
    for size in sizes:
        # The main size runs every shot count; the others only the smallest (the comparison of sizes).
        size_shots = shots if size == sizes[0] else [min(shots)]
        per = max(size_shots)
        base = {"num_classes": K, "image_size": size, "finetune_blocks": args.finetune_blocks}
        torch.manual_seed(0)
        prefix, pretrained_suffix = transfer_parts({**base, "mode": "finetune"})
        cl, nchw = time_layouts(prefix, xte[:32].float())
        layout_lines.append(f"| {size} | {nchw:.1f} | {cl:.1f} | {nchw / cl:.2f}x |")
        t = time.perf_counter()
        maps_te = extract(prefix, xte)
        prefix_ms = (time.perf_counter() - t) / len(xte) * 1000
        maps_v = extract(prefix, xv)
        pool_sel = torch.from_numpy(pool[:, :per].reshape(-1))
        t = time.perf_counter()
        maps_pool = extract(prefix, x[pool_sel])
        pool_s = time.perf_counter() - t
        pool_labels = y[pool_sel]
        aug_maps, aug_s = {}, 0.0
        if args.aug_copies:
            t = time.perf_counter()
            aug_maps[min(shots)] = extract(prefix, shifted_copies(x[train_sets[min(shots)]], args.aug_copies, 1))
            aug_s = time.perf_counter() - t

        # Frozen features = the ImageNet tail (last blocks + head, eval) applied to the cached maps:
        # the same function as the frozen-mode prefix, without running the images again.
        tail = copy.deepcopy(pretrained_suffix).eval()

        def pooled(maps: torch.Tensor, tail=tail) -> torch.Tensor:
            with torch.inference_mode():
                out = torch.cat([tail.head(tail.blocks(maps[i : i + 256])) for i in range(0, len(maps), 256)])
            return out.clone()

        feats_te, feats_v = pooled(maps_te), pooled(maps_v)
        for n in size_shots:
            sel = torch.from_numpy((np.arange(K)[:, None] * per + np.arange(n)[None, :]).reshape(-1))
            m_tr, y_tr = maps_pool[sel], pool_labels[sel]
            extract_s = pool_s * n / per
            variants = [("", m_tr, y_tr, extract_s)]
            if n in aug_maps:
                variants.append((f" + {args.aug_copies} shifted copies", torch.cat([m_tr, aug_maps[n]]),
                                 torch.cat([y_tr, y_tr.repeat(args.aug_copies)]), extract_s + aug_s))
            for label, mt, yt, ext_s in variants:
                torch.manual_seed(0)
                head = build_suffix({**base, "mode": "frozen"})
                acc, fit_s = fit_suffix(head, pooled(mt), yt, feats_v, yv, feats_te, yte, 1e-3, 2 * args.epochs)
                rows.append((n, f"transfer {size}px frozen + linear{label}", acc, ext_s + fit_s,
                             f"prefix {prefix_ms:.0f} ms/img"))
                torch.manual_seed(0)
                ft = copy.deepcopy(pretrained_suffix)
                acc, fit_s = fit_suffix(ft, mt, yt, maps_v, yv, maps_te, yte, args.finetune_lr, args.epochs // 2)
                rows.append((n, f"transfer {size}px finetune last {args.finetune_blocks} blocks{label}", acc,
                             ext_s + fit_s, f"{count_parameters(ft):,} trainable params"))

    print(f"\nFew-shot MNIST (builtin:mnist784), test = 1,000 fixed images, val = 100, seed {args.seed}, "
          f"{args.threads} threads\n")
    for n in shots:
        b_acc, b_fam = best_scratch[n]
        print(f"### {n} images per class ({n * K} training images); baseline = best from scratch ({b_fam})\n")
        print("| contender | test accuracy | vs best from scratch | train s (incl. prefix on train images) | note |")
        print("|---|---|---|---|---|")
        for shots_n, name, acc, secs, note in rows:
            if shots_n == n:
                print(f"| {name} | {acc:.3f} | {100 * (acc - b_acc):+.1f} pts | {secs:.1f} | {note} |")
        print()
    print("Prefix layout (finetune prefix, 32 test images, best of 3 after a warm-up):\n")
    print("| image size | default layout ms/img | channels_last ms/img | speed-up |")
    print("|---|---|---|---|")
    print("\n".join(layout_lines))


if __name__ == "__main__":
    main()
