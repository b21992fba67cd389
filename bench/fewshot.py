"""Few-shot MNIST: EfficientNet-Lite0 transfer (ImageNet weights) vs models trained from scratch.

Same seeded split for every contender, from builtin:mnist784 (5,000 digits, 500 per class):
a fixed test set of 100 per class (1,000 images), a validation set of 10 per class (100 images,
used by every contender for early stopping) and a training pool of 50 per class, whose first 10 per
class are the 10-shot set. From scratch: linear / mlp / cnn from ``build_model`` on Normalizer'd pixels,
trained by the Trainer with random shifts of 2 px. Transfer: the frozen prefix runs once per image (at
each image size), its outputs are cached, and the suffix is trained by the same Trainer on the cache:
"frozen" = pooled 1280-d features + linear head; "finetune" = last blocks + head conv + linear head.
Augmentation for transfer happens before the prefix: ``--aug-copies`` copies per training image, each
randomly shifted (up to 2 px), rotated (up to 12 degrees) and scaled (up to 10%) with ``F.affine_grid`` /
``grid_sample`` on the 0-255 pixels, are run through the prefix too. "recipe" = the best found: fine-tune
the last ``--recipe-blocks`` blocks with AdamW at a lower lr for the ImageNet blocks and head conv than for
the new classifier (param groups, a small loop here), on the augmented copies. "+ TTA" averages the softmax
over the test image and its ``--tta`` one-pixel shifts (up, down, left, right); the CNN gets the same TTA.

Prints markdown tables with ratios. Run: .venv/bin/python bench/fewshot.py
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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


def scratch(family: str, xtr, ytr, xv, yv, xte, yte, epochs: int, tta: int = 0) -> dict:
    torch.manual_seed(0)
    params = {"width": 32} if family == "cnn" else {}
    model = build_model({"family": family, "input_shape": [1, 28, 28], "num_classes": K, "params": params})
    t = time.perf_counter()
    norm = Normalizer().fit(xtr)
    cfg = TrainConfig(max_epochs=epochs, patience=max(epochs // 4, 10), batch_size=32, lr=1e-3, shift=2, seed=0)
    Trainer(cfg).fit(model, (norm.transform(xtr), ytr), (norm.transform(xv), yv))
    secs = time.perf_counter() - t
    acc = accuracy(batched_logits(model, norm.transform(xte)), yte)
    tta_acc = tta_accuracy(model, [norm.transform(v) for v in [xte, *tta_views(xte, tta)]], yte) if tta else None
    return {"acc": acc, "tta_acc": tta_acc, "train_s": secs, "params": count_parameters(model)}


def fit_suffix(suffix, ftr, ytr, fv, yv, fte, yte, lr: float, epochs: int) -> tuple[float, float]:
    cfg = TrainConfig(max_epochs=epochs, patience=max(epochs // 4, 10), batch_size=32, lr=lr, shift=0, seed=0)
    t = time.perf_counter()
    Trainer(cfg).fit(suffix, (ftr, ytr), (fv, yv))
    return accuracy(batched_logits(suffix, fte, batch_size=256), yte), time.perf_counter() - t


def shifted_copies(x: torch.Tensor, copies: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([random_shift(x.float(), 2, gen) for _ in range(copies)]) if copies else x[:0].float()


def affine_copies(x: torch.Tensor, copies: int, seed: int, rot: float = 12.0, scale: float = 0.1,
                  shift: float = 2.0) -> torch.Tensor:
    """``copies`` randomly transformed copies of each image of x (N, 1, 28, 28) 0-255: a shift of up to
    ``shift`` px, a rotation of up to ``rot`` degrees and a scale of up to 1 +- ``scale``; zero background."""
    if not copies:
        return x[:0].float()
    gen = torch.Generator().manual_seed(seed)
    xs = x.float().repeat(copies, 1, 1, 1)
    n, side = len(xs), x.shape[-1]
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(rot)
    zoom = 1 + (torch.rand(n, generator=gen) * 2 - 1) * scale
    move = (torch.rand(n, 2, generator=gen) * 2 - 1) * shift * 2 / side  # in affine_grid's [-1, 1] units
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, move[:, 0]], 1), torch.stack([sin, cos, move[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(xs.shape), align_corners=False)
    return F.grid_sample(xs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


TTA_SHIFTS = [(1, 0), (-1, 0), (0, 1), (0, -1)]


def tta_views(x: torch.Tensor, n: int) -> list[torch.Tensor]:
    """The first n one-pixel shifts of x (MNIST borders are background, so rolling is a shift)."""
    return [torch.roll(x, shifts=d, dims=(2, 3)) for d in TTA_SHIFTS[:n]]


def tta_accuracy(model, views: list[torch.Tensor], y: torch.Tensor, batch_size: int = 256) -> float:
    """Accuracy of the softmax averaged over views (each an input tensor for model)."""
    probs = sum(batched_logits(model, v, batch_size=batch_size).softmax(1) for v in views)
    return accuracy(probs, y)


def fit_groups(suffix, ftr, ytr, fv, yv, body_lr: float, head_lr: float, epochs: int, batch_size: int = 32,
               seed: int = 0) -> float:
    """Train a finetune suffix with AdamW, ``head_lr`` for its classifier and ``body_lr`` for the ImageNet
    blocks and head conv; keep the epoch with the best validation accuracy (ties: lower validation loss).
    Returns seconds."""
    t = time.perf_counter()
    head = list(suffix.classifier.parameters())
    ids = {id(p) for p in head}
    body = [p for p in suffix.parameters() if id(p) not in ids and p.requires_grad]
    opt = torch.optim.AdamW([{"params": body, "lr": body_lr}, {"params": head, "lr": head_lr}], weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    best_key, best_state = None, None
    for _ in range(epochs):
        suffix.train()
        perm = torch.randperm(len(ftr), generator=gen)
        for i in range(0, len(ftr), batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(suffix(ftr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        lv = batched_logits(suffix, fv, batch_size=256)
        key = (accuracy(lv, yv), -F.cross_entropy(lv, yv).item())
        if best_key is None or key > best_key:
            best_key, best_state = key, copy.deepcopy(suffix.state_dict())
    suffix.load_state_dict(best_state)
    return time.perf_counter() - t


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
    ap.add_argument("--aug-copies", type=int, default=8, help="augmented copies per training image through the prefix")
    ap.add_argument("--aug", choices=("affine", "shift"), default="affine",
                    help="affine: shift 2 px + rotate 12 deg + scale 10%%; shift: 2 px shifts only")
    ap.add_argument("--finetune-lr", type=float, default=5e-4)
    ap.add_argument("--recipe-blocks", type=int, default=4, help="blocks fine-tuned by the recipe")
    ap.add_argument("--body-lr", type=float, default=2e-4, help="recipe: lr of the ImageNet blocks and head conv")
    ap.add_argument("--head-lr", type=float, default=1e-3, help="recipe: lr of the new classifier")
    ap.add_argument("--tta", type=int, default=4, help="one-pixel test shifts averaged with the test image (0-4)")
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
            r = scratch(fam, xtr, ytr, xv, yv, xte, yte, args.epochs, args.tta if fam == "cnn" else 0)
            rows.append((n, f"from scratch: {fam}", r["acc"], r["train_s"], f"{r['params']:,} params"))
            if r["tta_acc"] is not None:
                rows.append((n, f"from scratch: {fam} + TTA ({args.tta} shifts)", r["tta_acc"], r["train_s"],
                             "same model, test-time averaging"))
            if r["acc"] > best_scratch.get(n, (-1,))[0]:
                best_scratch[n] = (r["acc"], fam)

    layout_lines = []
    for size in sizes:
        # The main size runs every shot count; the others only the smallest (the comparison of sizes).
        size_shots = shots if size == sizes[0] else [min(shots)]
        per = max(size_shots)
        base = {"num_classes": K, "image_size": size, "finetune_blocks": args.finetune_blocks}
        deep = max(args.finetune_blocks, args.recipe_blocks)
        torch.manual_seed(0)
        # The prefix is cut before the deepest fine-tuned block; shallower suffixes get their input by running
        # the first ImageNet blocks of the deep suffix (eval) over the cached maps.
        prefix, deep_suffix = transfer_parts({**base, "finetune_blocks": deep, "mode": "finetune"})
        torch.manual_seed(0)
        pretrained_suffix = transfer_parts({**base, "mode": "finetune"})[1]
        recipe_suffix = transfer_parts({**base, "finetune_blocks": args.recipe_blocks, "mode": "finetune"})[1]
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
            copies = affine_copies if args.aug == "affine" else shifted_copies
            aug_maps[min(shots)] = extract(prefix, copies(x[train_sets[min(shots)]], args.aug_copies, 1))
            aug_s = time.perf_counter() - t
        t = time.perf_counter()
        maps_tta = [extract(prefix, v) for v in tta_views(xte, args.tta)]
        tta_s = time.perf_counter() - t

        # Frozen features = the ImageNet tail (last blocks + head, eval) applied to the cached maps:
        # the same function as the frozen-mode prefix, without running the images again.
        tail = copy.deepcopy(deep_suffix).eval()
        skip = deep - args.finetune_blocks

        def batched(fn, maps: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                out = torch.cat([fn(maps[i : i + 256]) for i in range(0, len(maps), 256)])
            return out.clone()

        def pooled(maps: torch.Tensor, tail=tail) -> torch.Tensor:
            return batched(lambda m: tail.head(tail.blocks(m)), maps)

        def shallow(maps: torch.Tensor, first=nn.Sequential(*tail.blocks.blocks[:skip])) -> torch.Tensor:
            """deep-cut maps -> the input of the finetune_blocks suffix (the first ImageNet blocks, eval)."""
            return batched(first, maps) if len(first) else maps

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
                acc, fit_s = fit_suffix(ft, shallow(mt), yt, shallow(maps_v), yv, shallow(maps_te), yte,
                                        args.finetune_lr, args.epochs // 2)
                rows.append((n, f"transfer {size}px finetune last {args.finetune_blocks} blocks{label}", acc,
                             ext_s + fit_s, f"{count_parameters(ft):,} trainable params"))
            if n in aug_maps:  # the recipe, on the augmented set only
                _, mt, yt, ext_s = variants[-1]
                torch.manual_seed(0)
                rc = copy.deepcopy(recipe_suffix)
                fit_s = fit_groups(rc, mt, yt, maps_v, yv, args.body_lr, args.head_lr, args.epochs // 2)
                name = (f"transfer {size}px recipe: finetune last {args.recipe_blocks} blocks, lr {args.body_lr:g} "
                        f"blocks / {args.head_lr:g} classifier{label}")
                note = f"{count_parameters(rc):,} trainable params"
                rows.append((n, name, accuracy(batched_logits(rc, maps_te, batch_size=256), yte), ext_s + fit_s, note))
                if maps_tta:
                    rows.append((n, f"{name} + TTA ({args.tta} shifts)", tta_accuracy(rc, [maps_te, *maps_tta], yte),
                                 ext_s + fit_s, f"test prefix x{args.tta + 1} ({tta_s:.0f} s extra)"))

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
