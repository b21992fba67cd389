"""Customer-service benchmark: answering held-back customer questions from the built-in help desk.

Run: ``.venv/bin/python bench/faq.py`` (CPU; about 5 minutes on 2 cores).

One run, side by side, on the same held-back half of the built-in example's customer questions
(synthetic: a fictional shop's FAQ of 55 entries with 8 customer questions each, and 90
out-of-scope questions; ``builtin:faq-example``):

1. The whole loop as ``modelloop demo --task faq`` runs it (real server, real HTTP): the project
   starts from the FAQ alone (v1: zero-shot MiniLM), customers ask the other half of the
   questions, the helped ones say so and agents correct the rest, the project retrains on that
   feedback and the gate decides. Rows: the lexical baseline (BM25 over question + answer), v1
   zero-shot, and the champion after learning, on the held-back half: top-1 accuracy of the
   in-scope questions, the share of out-of-scope questions refused and of in-scope ones refused.
   The loop runs ``--repeats`` times: which predictions are held out for the gate and for the
   threshold follows their (random) ids, so each run learns from a different part of the feedback.
2. Latency of one question over an FAQ of 1,000 entries (the 55 real entries plus 945 filler
   entries made of review snippets): in process with the champion's retriever (encoder pass +
   matrix product), and over HTTP (``POST /answer`` of a project on that FAQ, sequential
   requests on loopback; each answer is logged and committed before it is sent), p50/p95.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, load  # noqa: E402


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[c])) for r in [header, *rows]) for c in range(len(header))]
    print(f"\n{title}")
    print("| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)) + " |")


def fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def thousand_entries(retriever):
    """The champion's retriever config over 1,000 entries: the real ones plus review snippets."""
    from modelloop.data.text import load_rotten_tomatoes
    from modelloop.models.retrieval import Retriever

    texts = load_rotten_tomatoes().texts
    n = 1000 - len(retriever.ids)
    ids = retriever.ids + [f"filler-{i}" for i in range(n)]
    questions = retriever.questions + [f"What about {t[:60]}?" for t in texts[:n]]
    answers = retriever.answers + list(texts[n:2 * n])
    config = {k: v for k, v in retriever.get_config().items() if k not in ("threshold_rule", "threshold_validation")}
    big = Retriever(config, ids, questions, answers)
    big.encoder = retriever.encoder  # the champion's (fine-tuned) encoder
    big._adapters = retriever._adapters
    return big.index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default: the spec's)")
    parser.add_argument("--requests", type=int, default=200, help="HTTP latency: sequential requests")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the whole loop")
    args = parser.parse_args()

    import httpx

    from modelloop.data.faq import builtin_faq_example
    from modelloop.demo import BackgroundServer, client_headers, faq_traffic, measure_answers, run_faq_demo
    from modelloop.evaluate.metrics import latency_ms
    from modelloop.models.retrieval import Retriever
    from modelloop.serve import create_app
    from modelloop.tasks.faq import load_version

    print(f"machine: {describe()}; load average at the start {load()}")
    t0 = time.perf_counter()
    faq, _ = builtin_faq_example()
    _, held = faq_traffic()
    bm25 = Retriever({"kind": "bm25"}, faq.ids, faq.questions, faq.answers)
    lexical = measure_answers(bm25, held)
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for rep in range(args.repeats):
            res = run_faq_demo(Path(tmp) / f"helpdesk-{rep}", fine_tune_epochs=args.epochs,
                               progress=lambda m: print(m, flush=True))
            runs.append((res, load()))
        rows = [["BM25 (question + answer), no threshold", fmt(lexical["top1"]), "-", "-", "-", "-"]]
        for i, (res, ld) in enumerate(runs):
            hb = res["held_back"]
            rows.append([f"run {i + 1}: {hb['first_version']} zero-shot MiniLM", fmt(hb["before"]["top1"]),
                         fmt(hb["before"]["out_of_scope_refused"]), fmt(hb["before"]["in_scope_refused"]), "-", ld])
            rows.append([f"run {i + 1}: {hb['champion']} after learning from feedback", fmt(hb["after"]["top1"]),
                         fmt(hb["after"]["out_of_scope_refused"]), fmt(hb["after"]["in_scope_refused"]),
                         f"{res['decision']} ({res['traffic']['feedback']} feedback)", ld])
        after = {k: float(np.median([r["held_back"]["after"][k] for r, _ in runs]))
                 for k in ("top1", "out_of_scope_refused", "in_scope_refused")}
        hb0 = runs[0][0]["held_back"]
        table(f"Held-back half: {hb0['before']['in_scope']} in-scope and {hb0['before']['out_of_scope']} out-of-scope "
              f"questions never asked before; {len(runs)} runs of the loop (which predictions are held out for the "
              "gate and the threshold depends on their random ids)",
              ["model", "top-1 (in scope)", "out-of-scope refused", "in-scope refused", "gate", "load average"], rows)
        before = float(np.median([r["held_back"]["before"]["top1"] for r, _ in runs]))
        print(f"\nmedians: zero-shot MiniLM {before:.3f} vs BM25 {lexical['top1']:.3f} "
              f"({100 * (before - lexical['top1']):+.1f} points); after learning top-1 {after['top1']:.3f} "
              f"({100 * (after['top1'] - before):+.1f} points), out-of-scope refused "
              f"{after['out_of_scope_refused']:.3f}, in-scope refused {after['in_scope_refused']:.3f}; loop "
              f"{np.median([r['seconds'] for r, _ in runs]):.0f} s")

        from modelloop.project import Project

        p = Project(runs[0][0]["project"])
        champ = load_version(p.loop.registry, p.loop.registry.champion()).retriever
        big = thousand_entries(champ)
        qs = [q for q, _ in held]
        inproc = latency_ms(lambda i: big.answer([qs[i % len(qs)]], 3), runs=300, warmup=20)
        load_inproc = load()
        # the same FAQ of 1,000 entries served: a zero-shot project on it (one encoder pass per
        # question, as the fine-tuned one: its adapters are merged into the weights)
        big_faq = Path(tmp) / "faq-1000.csv"
        import pandas as pd

        pd.DataFrame({"id": big.ids, "question": big.questions, "answer": big.answers}).to_csv(big_faq, index=False)
        served = Project.init(Path(tmp) / "helpdesk-1000", task="faq", data=str(big_faq), name="helpdesk-1000")
        served.run()
        headers = client_headers(served)
        with BackgroundServer(create_app(served.path)) as server, httpx.Client(base_url=server.url, headers=headers,
                                                                               timeout=30) as client:
            for q in qs[:20]:
                client.post("/answer", json={"question": q})
            times = []
            for i in range(args.requests):
                t = time.perf_counter()
                client.post("/answer", json={"question": qs[i % len(qs)], "k": 3}).raise_for_status()
                times.append((time.perf_counter() - t) * 1000)
        load_http = load()
        rows = [[f"in process (champion's encoder), {len(big.ids)} entries", f"{inproc['p50_ms']:.1f}",
                 f"{inproc['p95_ms']:.1f}", load_inproc],
                [f"POST /answer over HTTP (answer logged and committed), {len(big.ids)} entries",
                 f"{np.percentile(times, 50):.1f}", f"{np.percentile(times, 95):.1f}", load_http]]
        table("Single-question latency (ms)", ["path", "p50", "p95", "load average"], rows)
    print(f"\ntook {time.perf_counter() - t0:.0f} s; machine: {describe()}")


if __name__ == "__main__":
    main()
