"""Distillation: an EfficientNet-Lite0 transfer teacher into the small CNN, on MNIST with few labels.

Seeded split of builtin:mnist784 (500 digits per class): a fixed test set of 100 per class (1,000
images), a validation set of 10 per class, ``--labeled`` per class with labels, and ``--unlabeled``
further images whose labels are never used (the teacher labels them).

- teacher: EfficientNet-Lite0 (ImageNet weights), last blocks fine-tuned on the labeled images (plus
  shifted copies through the frozen prefix), the suffix trained by the Trainer on cached prefix outputs;
- student (hard): ``build_model({"family": "cnn", ..., "params": {"width": 16}})`` trained by the
  Trainer on the labeled images' true labels only;
- student (distilled): the same CNN trained by the Trainer on ``soft_targets`` (teacher at temperature
  T mixed with the true label where known) for the labeled and the unlabeled images.

Single-image latency is the p50 of one image at a time (0-255 pixels in, logits out): the teacher's
includes its prefix (resize to the image size, ImageNet normalization, stem and blocks), the student's
its normalization. Prints markdown tables with ratios. Run: .venv/bin/python bench/distill.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from modelloop.compress.distill import soft_targets
from modelloop.data.builtin import load_builtin
from modelloop.data.transforms import Normalizer, random_shift
from modelloop.models import batched_logits, build_model, count_parameters
from modelloop.models.transfer import extract, transfer_parts
from modelloop.train.trainer import TrainConfig, Trainer

K = 10


def split(y: np.ndarray, seed: int, labeled: int, unlabeled_total: int):
    rng = np.random.default_rng(seed)
    test, val, lab, rest = [], [], [], []
    for c in range(K):
        idx = rng.permutation(np.flatnonzero(y == c))
        test.append(idx[:100])
        val.append(idx[100:110])
        lab.append(idx[110 : 110 + labeled])
        rest.append(idx[110 + labeled :])
    rest_all = rng.permutation(np.concatenate(rest))[:unlabeled_total]
    return np.concatenate(test), np.concatenate(val), np.concatenate(lab), rest_all


def p50_ms(fn, x: torch.Tensor, reps: int) -> float:
    times = []
    with torch.inference_mode():
        for i in range(reps + 5):
            xi = x[i % len(x)].unsqueeze(0)
            t = time.perf_counter()
            fn(xi)
            if i >= 5:  # the first calls warm up allocators and kernels
                times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def acc_of(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(1) == y).float().mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labeled", type=int, default=50, help="labeled images per class")
    ap.add_argument("--unlabeled", type=int, default=2000, help="unlabeled images the teacher labels")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--finetune-blocks", type=int, default=2)
    ap.add_argument("--aug-copies", type=int, default=2)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    data = load_builtin("mnist784")
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    te, va, la, un = (torch.from_numpy(i) for i in split(data.y, args.seed, args.labeled, args.unlabeled))
    xte, yte, xv, yv, xl, yl, xu = x[te], y[te], x[va], y[va], x[la], y[la], x[un]

    # Teacher: frozen prefix once per image, fine-tuned suffix on the cache.
    t0 = time.perf_counter()
    config = {"mode": "finetune", "finetune_blocks": args.finetune_blocks, "num_classes": K,
              "image_size": args.image_size}
    torch.manual_seed(0)
    prefix, suffix = transfer_parts(config)
    gen = torch.Generator().manual_seed(1)
    copies = [random_shift(xl.float(), 2, gen) for _ in range(args.aug_copies)]
    m_train = extract(prefix, torch.cat([xl.float(), *copies]))
    y_train = yl.repeat(1 + args.aug_copies)
    m_val = extract(prefix, xv)
    cfg = TrainConfig(max_epochs=args.epochs // 2, patience=8, batch_size=32, lr=5e-4, shift=0, seed=0)
    Trainer(cfg).fit(suffix, (m_train, y_train), (m_val, yv))
    teacher_train_s = time.perf_counter() - t0
    suffix.eval()
    m_te = extract(prefix, xte)
    teacher_acc = acc_of(batched_logits(suffix, m_te, 256), yte)

    # Teacher probabilities for the labeled and the unlabeled images.
    t0 = time.perf_counter()
    m_u = extract(prefix, xu)
    label_s = time.perf_counter() - t0
    with torch.inference_mode():
        p_l = torch.softmax(batched_logits(suffix, m_train[: len(xl)], 256), 1)
        p_u = torch.softmax(batched_logits(suffix, m_u, 256), 1)
    teacher_on_unlabeled = acc_of(p_u, y[un])

    student_cfg = {"family": "cnn", "input_shape": [1, 28, 28], "num_classes": K, "params": {"width": 16}}
    scfg = TrainConfig(max_epochs=args.epochs, patience=10, batch_size=64, lr=1e-3, shift=2, seed=0)

    # Student on hard labels only.
    torch.manual_seed(0)
    hard = build_model(student_cfg)
    norm_h = Normalizer().fit(xl)
    t0 = time.perf_counter()
    Trainer(scfg).fit(hard, (norm_h.transform(xl), yl), (norm_h.transform(xv), yv))
    hard_s = time.perf_counter() - t0
    hard_acc = acc_of(batched_logits(hard, norm_h.transform(xte)), yte)

    # Distilled students: labeled images with mixed targets, then + the teacher-labeled rest.
    results = []
    for name, xs, targets in (
        ("student, distilled (labeled only)", xl, soft_targets(p_l, yl, args.temperature, args.alpha)),
        (f"student, distilled (labeled + {len(xu):,} unlabeled)", torch.cat([xl, xu]),
         soft_targets(torch.cat([p_l, p_u]), torch.cat([yl, torch.full((len(xu),), -1)]),
                      args.temperature, args.alpha)),
    ):
        torch.manual_seed(0)
        student = build_model(student_cfg)
        norm = Normalizer().fit(xs)
        t0 = time.perf_counter()
        Trainer(scfg).fit(student, (norm.transform(xs), targets), (norm.transform(xv), yv))
        secs = time.perf_counter() - t0
        results.append((name, student, norm, acc_of(batched_logits(student, norm.transform(xte)), yte), secs))

    # Latency, one image at a time; raw 0-255 pixels in.
    prefix.eval()
    suffix.eval()
    lat_teacher = p50_ms(lambda xi: suffix(prefix(xi)), xte.float(), args.reps)
    best_student = max(results, key=lambda r: r[3])
    s_model, s_norm = best_student[1].eval(), best_student[2]
    lat_student = p50_ms(lambda xi: s_model(s_norm.transform(xi)), xte.float(), args.reps)

    n_teacher = count_parameters(prefix) + count_parameters(suffix)
    n_student = count_parameters(s_model)
    print(f"\nDistillation on builtin:mnist784: {args.labeled} labeled per class ({len(xl)}), {len(xu):,} unlabeled, "
          f"test 1,000 fixed, image size {args.image_size}, T={args.temperature}, alpha={args.alpha}, "
          f"{args.threads} threads, seed {args.seed}\n")
    print("| model | test accuracy | vs teacher | p50 single-image ms | latency vs teacher | params | fp32 MB | "
          "train s |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| teacher: EfficientNet-Lite0 {args.image_size}px, last {args.finetune_blocks} blocks fine-tuned | "
          f"{teacher_acc:.3f} | +0.0 pts | {lat_teacher:.1f} | 1.00x | {n_teacher:,} | {n_teacher * 4 / 1e6:.1f} | "
          f"{teacher_train_s:.0f} |")
    print(f"| student: CNN width 16, hard labels only | {hard_acc:.3f} | {100 * (hard_acc - teacher_acc):+.1f} pts | "
          f"{lat_student:.2f} | {lat_student / lat_teacher:.3f}x | {n_student:,} | {n_student * 4 / 1e6:.2f} | "
          f"{hard_s:.0f} |")
    for name, _, _, acc, secs in results:
        print(f"| {name} | {acc:.3f} | {100 * (acc - teacher_acc):+.1f} pts | {lat_student:.2f} | "
              f"{lat_student / lat_teacher:.3f}x | {n_student:,} | {n_student * 4 / 1e6:.2f} | {secs:.0f} |")
    print(f"\nTeacher accuracy on the unlabeled images it labeled: {teacher_on_unlabeled:.3f}; "
          f"labeling them took {label_s:.0f} s (prefix).")


if __name__ == "__main__":
    main()
