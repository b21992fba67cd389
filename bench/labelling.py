"""Labels chosen by the labelling queue vs labels chosen at random, and the audit sample's live
accuracy vs the feedback-based figure, on the founding case's traffic.

Part 1 (which labels teach most): a weak champion (a small MLP on pixels trained on 30 digits of
the founding case's training split) serves the 3,900 traffic images; 2,900 are the pool a
labeller draws from, 1,000 are held out to measure accuracy. After 50, 100, 200 and 400 labels
the model is retrained from scratch on the 30 + the labels, and each arm's next labels are chosen
with the retrained model: the queue arm as ``GET /label/next`` chooses (``feedback.labelling``:
a 10% uniformly random audit share, the rest out-of-distribution first, then uncertainty (margin)
with diversity over the model's embeddings, from a shortlist of the most uncertain), the
baseline uniformly at random. Mean over seeds.

Part 2 (what live accuracy is): a champion trained on 30 + 100 random labels serves the pool.
Users give biased feedback: they correct a wrong answer with probability 0.30 and confirm a
right one with probability 0.02. The feedback figure is accuracy on the answers that got
feedback; the audit figure is accuracy on 200 uniformly random answers (``pick_audit``) with its
95% Wilson interval (``audit_figure``); the truth is accuracy on every served answer.

    .venv/bin/python bench/labelling.py [--seeds 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, load  # noqa: E402

from modelloop.data.builtin import load_builtin, seed_case_traffic  # noqa: E402
from modelloop.feedback.drift import embed  # noqa: E402
from modelloop.feedback.labelling import audit_figure, pick_active, pick_audit, uncertainty  # noqa: E402
from modelloop.feedback.ood import fit_calibration  # noqa: E402

BUDGETS = (50, 100, 200, 400)
INITIAL = 30
AUDIT_FRACTION = 0.1
CORRECT_WRONG, CONFIRM_RIGHT = 0.30, 0.02


def fit(x: np.ndarray, y: np.ndarray, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 2))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(150):  # full batch: a few hundred examples at most
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return model.eval()


def proba(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return torch.softmax(model(torch.from_numpy(x)), 1).numpy()


def queue_pick(model: nn.Module, x_lab: np.ndarray, pool_x: np.ndarray, free: np.ndarray, want: int,
               rng: np.random.Generator) -> list[int]:
    """Indices into the pool, chosen as the labelling queue chooses."""
    k_audit = int(rng.binomial(want, AUDIT_FRACTION))
    audit = [int(i) for i in pick_audit(list(free), k_audit, rng)]
    rest = np.setdiff1d(free, audit)
    p = proba(model, pool_x[rest])
    u = np.array([uncertainty({"even": float(a), "odd": float(b)}) for a, b in p])
    short = np.argsort(-u, kind="stable")[: max(10 * want, 100)]
    emb = embed(model, torch.from_numpy(pool_x[rest[short]]))
    cal = fit_calibration(embed(model, torch.from_numpy(x_lab)), None, embed(model, torch.from_numpy(x_lab)))
    scores = cal.score(emb)
    ood = np.where(scores > cal.threshold * 3, scores, np.nan)  # only far outside: what the server would flag
    order = pick_active(u[short], emb, want - len(audit), ood)
    return audit + [int(rest[short[j]]) for j in order]


def founding_case() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The founding case's training split and its live traffic, as flat pixels in [0, 1]:
    (training x, training y, traffic x, traffic y)."""
    seed_case = load_builtin("seed-case")
    tr = seed_case.fixed_split["train"]
    x_seed = seed_case.x[tr].reshape(len(tr), -1).astype(np.float32) / 255
    tx, ty = seed_case_traffic()
    return x_seed, seed_case.y[tr], tx.reshape(len(tx), -1).astype(np.float32) / 255, ty


def part1(seeds: int) -> dict[str, list[list[float]]]:
    x_seed, y_seed, tx, ty = founding_case()
    out: dict[str, list[list[float]]] = {"queue": [], "random": []}
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        init = rng.choice(len(y_seed), INITIAL, replace=False)
        perm = rng.permutation(len(ty))
        pool, held = perm[:2900], perm[2900:]
        for arm in ("queue", "random"):
            arm_rng = np.random.default_rng(1000 + seed)
            chosen: list[int] = []
            accs = []
            model = fit(x_seed[init], y_seed[init], seed)
            for budget in BUDGETS:
                free = np.setdiff1d(np.arange(len(pool)), chosen)
                want = budget - len(chosen)
                if arm == "random":
                    chosen += [int(i) for i in arm_rng.choice(free, want, replace=False)]
                else:
                    x_lab = np.concatenate([x_seed[init], tx[pool[chosen]]]) if chosen else x_seed[init]
                    chosen += queue_pick(model, x_lab, tx[pool], free, want, arm_rng)
                x = np.concatenate([x_seed[init], tx[pool[chosen]]])
                y = np.concatenate([y_seed[init], ty[pool[chosen]]])
                model = fit(x, y, seed)
                accs.append(float((proba(model, tx[held]).argmax(1) == ty[held]).mean()))
            out[arm].append(accs)
    return out


def part2(seeds: int) -> list[dict[str, float]]:
    x_seed, y_seed, tx, ty = founding_case()
    rows = []
    for seed in range(seeds):
        rng = np.random.default_rng(500 + seed)
        perm = rng.permutation(len(ty))
        train, served = perm[:100], perm[900:]
        init = rng.choice(len(y_seed), INITIAL, replace=False)
        model = fit(np.concatenate([x_seed[init], tx[train]]), np.concatenate([y_seed[init], ty[train]]), seed)
        pred = proba(model, tx[served]).argmax(1)
        right = pred == ty[served]
        truth = float(right.mean())
        gave = np.where(right, rng.random(len(right)) < CONFIRM_RIGHT, rng.random(len(right)) < CORRECT_WRONG)
        fb = float(right[gave].mean())
        names = ("even", "odd")
        ids = [str(i) for i in range(len(served))]
        audited = pick_audit(ids, 200, rng)
        fig = audit_figure([{"label": names[int(ty[served][int(i)])], "predicted": names[int(pred[int(i)])]}
                            for i in audited], regression=False)
        covered = 0
        for _ in range(400):  # how often the audit interval covers the truth
            f = audit_figure([{"label": names[int(ty[served][int(i)])], "predicted": names[int(pred[int(i)])]}
                              for i in pick_audit(ids, 200, rng)], regression=False)
            covered += f["low"] <= truth <= f["high"]
        rows.append({"truth": truth, "audit": fig["value"], "low": fig["low"], "high": fig["high"],
                     "feedback": fb, "feedback_n": int(gave.sum()), "coverage": covered / 400})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    print(f"machine: {describe()}; load average at start {load()}")
    res = part1(args.seeds)
    q, r = np.array(res["queue"]), np.array(res["random"])
    print(f"\nPart 1: accuracy on 1,000 held-out traffic digits after N labels (mean ± sd over {args.seeds} seeds; "
          f"weak champion: {INITIAL} labelled digits)\n")
    print("| labels | chosen by the queue | chosen at random | queue - random |")
    print("|---|---|---|---|")
    for j, b in enumerate(BUDGETS):
        print(f"| {b} | {q[:, j].mean():.4f} ± {q[:, j].std():.4f} | {r[:, j].mean():.4f} ± {r[:, j].std():.4f} | "
              f"{q[:, j].mean() - r[:, j].mean():+.4f} |")
    target = r[:, -1].mean()
    reached = [b for j, b in enumerate(BUDGETS) if q[:, j].mean() >= target]
    print(f"\nrandom's 400-label accuracy {target:.4f}: the queue reaches it with "
          f"{reached[0] if reached else 'more than 400'} labels (target: at most 200)")
    rows = part2(args.seeds)
    print(f"\nPart 2: live accuracy of a served champion ({len(rows)} seeds; feedback: wrong answers corrected with "
          f"p={CORRECT_WRONG}, right ones confirmed with p={CONFIRM_RIGHT}; audit: 200 uniformly random answers)\n")
    print("| seed | true live accuracy | audit sample (95% Wilson) | feedback-based (biased) | "
          "audit interval covers truth (400 redraws) |")
    print("|---|---|---|---|---|")
    for i, row in enumerate(rows):
        print(f"| {i} | {row['truth']:.4f} | {row['audit']:.4f} [{row['low']:.4f}, {row['high']:.4f}] | "
              f"{row['feedback']:.4f} (n={row['feedback_n']}) | {row['coverage']:.1%} |")
    print(f"\nload average at end {load()}; {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
