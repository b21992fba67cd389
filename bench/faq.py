"""Customer-service benchmark: answering held-back customer questions from the built-in help desk.

Run: ``.venv/bin/python bench/faq.py`` (CPU; about 10 minutes on 2 cores).

One run, side by side, on the same held-back half of the built-in example's customer questions
(synthetic: a fictional shop's FAQ of 55 entries with 8 customer questions each, and 90
out-of-scope questions; ``builtin:faq-example``):

1. The whole loop as ``modelloop demo --task faq`` runs it (real server, real HTTP): the project
   starts from the FAQ alone (v1: zero-shot MiniLM), customers ask the other half of the
   questions, the helped ones say so and agents correct the rest, the project retrains on that
   feedback and the gate decides. Rows: the lexical baseline (BM25 over question + answer), v1
   zero-shot, and the champion after learning, on the held-back half: top-1 accuracy of the
   in-scope questions, the share of out-of-scope questions refused and of in-scope ones refused.
2. Latency of one question with the champion's retriever over an FAQ of 1,000 entries (the 55
   real entries plus 945 filler entries made of review snippets): in process (encoder pass +
   matrix product) and over HTTP (``POST /answer``, sequential requests on loopback), p50/p95.
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
    args = parser.parse_args()

    import httpx

    from modelloop.data.faq import builtin_faq_example
    from modelloop.demo import BackgroundServer, faq_traffic, measure_answers, run_faq_demo
    from modelloop.evaluate.metrics import latency_ms
    from modelloop.models.retrieval import Retriever
    from modelloop.serve import create_app
    from modelloop.serve.security import keys_for
    from modelloop.tasks.faq import load_version

    print(f"machine: {describe()}; load average at the start {load()}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        res = run_faq_demo(Path(tmp) / "helpdesk", fine_tune_epochs=args.epochs,
                           progress=lambda m: print(m, flush=True))
        load_loop = load()
        faq, _ = builtin_faq_example()
        _, held = faq_traffic()
        bm25 = Retriever({"kind": "bm25"}, faq.ids, faq.questions, faq.answers)
        lexical = measure_answers(bm25, held)
        hb = res["held_back"]
        rows = [["BM25 (question + answer), no threshold", fmt(lexical["top1"]), "-", "-"],
                [f"{hb['first_version']}: zero-shot MiniLM", fmt(hb["before"]["top1"]),
                 fmt(hb["before"]["out_of_scope_refused"]), fmt(hb["before"]["in_scope_refused"])],
                [f"{hb['champion']}: champion after learning from feedback", fmt(hb["after"]["top1"]),
                 fmt(hb["after"]["out_of_scope_refused"]), fmt(hb["after"]["in_scope_refused"])]]
        table(f"Held-back half: {hb['before']['in_scope']} in-scope and {hb['before']['out_of_scope']} out-of-scope "
              f"questions never asked before (load average {load_loop})",
              ["model", "top-1 (in scope)", "out-of-scope refused", "in-scope refused"], rows)
        tr = res["traffic"]
        print(f"\nloop: {tr['requests']} questions asked ({tr['helped']} helped, {tr['corrected']} corrected); gate "
              f"{res['decision']}: {'; '.join(res['reasons'])}; {res['seconds']} s")
        print(f"zero-shot MiniLM vs BM25: {100 * (hb['before']['top1'] - lexical['top1']):+.1f} points; after "
              f"learning vs zero-shot: {100 * (hb['after']['top1'] - hb['before']['top1']):+.1f} points")

        project = Path(res["project"])
        from modelloop.project import Project

        p = Project(project)
        champ = load_version(p.loop.registry, p.loop.registry.champion()).retriever
        big = thousand_entries(champ)
        qs = [q for q, _ in held]
        inproc = latency_ms(lambda i: big.answer([qs[i % len(qs)]], 3), runs=300, warmup=20)
        load_inproc = load()
        keys, _ = keys_for(p.loop.spec.serving.keys, p.loop.paths.state / "keys.json")
        headers = {"Authorization": f"Bearer {(keys['client'] or keys['admin'])[0]}"}
        with BackgroundServer(create_app(project)) as server, httpx.Client(base_url=server.url, headers=headers,
                                                                           timeout=30) as client:
            for q in qs[:20]:
                client.post("/answer", json={"question": q})
            times = []
            for i in range(args.requests):
                t = time.perf_counter()
                client.post("/answer", json={"question": qs[i % len(qs)], "k": 3}).raise_for_status()
                times.append((time.perf_counter() - t) * 1000)
        load_http = load()
        rows = [[f"in process, {len(big.ids)} entries", f"{inproc['p50_ms']:.1f}", f"{inproc['p95_ms']:.1f}",
                 load_inproc],
                [f"POST /answer over HTTP, {len(champ.ids)} entries", f"{np.percentile(times, 50):.1f}",
                 f"{np.percentile(times, 95):.1f}", load_http]]
        table("Single-question latency with the champion (ms)", ["path", "p50", "p95", "load average"], rows)
    print(f"\ntook {time.perf_counter() - t0:.0f} s; machine: {describe()}")


if __name__ == "__main__":
    main()
