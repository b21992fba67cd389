"""A self-contained HTML report (plots embedded as PNG) for a training run or a retrain."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

__all__ = ["write_report", "html_table", "write_page", "version_line", "requirements_table", "gate_section"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#1d2330;padding:0 1rem}h1{font-size:1.6rem}
h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #dde;padding-bottom:.3rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
td,th{border:1px solid #dde;padding:.3rem .6rem;text-align:left}
th{background:#f3f5fa}.pass{color:#117a37;font-weight:600}.fail{color:#b3261e;font-weight:600}
.grid{display:flex;flex-wrap:wrap;gap:1rem}.grid img{max-width:520px;border:1px solid #eee}
code{background:#f3f5fa;padding:0 .25rem}
"""


def _pyplot():
    """matplotlib.pyplot on the Agg backend, imported on first use (it costs ~0.5 s at start-up)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _learning_curves(history: list[dict[str, float]], score: str = "validation accuracy") -> str:
    plt = _pyplot()
    fig, ax1 = plt.subplots(figsize=(5.5, 3.4))
    ep = [h["epoch"] for h in history]
    ax1.plot(ep, [h["train_loss"] for h in history], label="train loss", color="#3366cc")
    ax1.plot(ep, [h["val_loss"] for h in history], label="validation loss", color="#dc3912")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax2 = ax1.twinx()
    ax2.plot(ep, [h["val_accuracy"] for h in history], label=score, color="#109618", ls="--")
    ax2.set_ylabel(score.removeprefix("validation "))
    fig.legend(loc="upper right", fontsize=8)
    ax1.set_title("Learning curves (final training)")
    return _png(fig)


def _confusion(cm: list[list[int]], names: list[str], title: str) -> str:
    plt = _pyplot()
    k = len(names)
    fig, ax = plt.subplots(figsize=(max(3.2, 0.45 * k + 2), max(3.0, 0.45 * k + 1.6)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(k), names, rotation=45 if k > 4 else 0)
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = max(max(r) for r in cm) if cm else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, cm[i][j], ha="center", va="center", color="white" if cm[i][j] > top / 2 else "black",
                    fontsize=8)
    ax.set_title(title)
    return _png(fig)


def _scatter(y: Any, pred: Any, title: str) -> str:
    """Predicted against true values (regression), with the identity line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    ax.scatter(y, pred, s=10, alpha=0.7, color="#3366cc")
    lo, hi = float(min(min(y), min(pred))), float(max(max(y), max(pred)))
    ax.plot([lo, hi], [lo, hi], color="#999999", lw=1)
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(title)
    return _png(fig)


def _tradeoff_plot(rows: list[dict[str, Any]], req: dict[str, Any] | None) -> str:
    """Validation accuracy against p95 single-item latency, one point per candidate, with the
    requirement lines (quality target, latency budget)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    for r in rows:
        colour = "#109618" if r.get("meets_requirements") else "#dc3912"
        marker = "*" if str(r.get("decision", "")).startswith("chosen") else "o"
        ax.scatter([r["p95_ms"]], [r["val_accuracy"] or 0.0], c=colour, marker=marker, s=140 if marker == "*" else 40,
                   zorder=3)
        ax.annotate(r["candidate"], (r["p95_ms"], r["val_accuracy"] or 0.0), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    req = req or {}
    if req.get("target") is not None:
        ax.axhline(req["target"], color="#666666", ls="--", lw=1, label=f"target {req['target']}")
    if req.get("p95_latency_ms") is not None:
        ax.axvline(req["p95_latency_ms"], color="#999999", ls=":", lw=1, label=f"p95 budget {req['p95_latency_ms']} ms")
    ax.set_xscale("log")
    ax.set_xlabel("p95 single-item latency, ms (log)")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Quality vs latency (★ chosen; green meets every requirement)", fontsize=9)
    if req.get("target") is not None or req.get("p95_latency_ms") is not None:
        ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def _monitor_plot(mon: dict[str, Any]) -> str:
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(7.0, 2.8))
    d = mon["drift"]
    if d.get("statistic") is not None:
        a1.bar(["statistic", "threshold"], [d["statistic"], d["threshold"]],
               color=["#dc3912" if d["detected"] else "#3366cc", "#999999"])
        a1.set_title(f"Input drift (MMD²): {'detected' if d['detected'] else 'none'}", fontsize=9)
    else:
        a1.text(0.5, 0.5, "not measured", ha="center")
        a1.set_title("Input drift", fontsize=9)
    la = mon["live_accuracy"]
    if la.get("value") is not None:
        err = [[max(0.0, la["value"] - la["low"])], [max(0.0, la["high"] - la["value"])]]
        a2.errorbar([0], [la["value"]], yerr=err, fmt="o", capsize=6, color="#109618")
        a2.set_xticks([0], [f"{mon['model_version']} (n={la['n']})"])
        a2.set_ylim(0, 1.02)
        a2.set_title("Live accuracy from feedback (95% CI)", fontsize=9)
    else:
        a2.text(0.5, 0.5, "no labelled feedback", ha="center")
    return _png(fig)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return html.escape(str(v))


def _metrics_table(metrics: dict[str, Any]) -> str:
    if "rmse" in metrics:  # regression
        return _table(["metric", "test"], [[k, _fmt(metrics.get(k))] for k in
                                           ("rmse", "mae", "r2", "mean_error", "target_std", "n")])
    rows = [[k, _fmt(metrics.get(k))] for k in ("accuracy", "f1_macro", "precision_macro", "recall_macro", "roc_auc")]
    per = [[html.escape(c), _fmt(m["precision"]), _fmt(m["recall"]), _fmt(m["f1"]), m["support"]]
           for c, m in metrics["per_class"].items()]
    return _table(["metric", "test"], rows) + _table(["class", "precision", "recall", "F1", "support"], per)


def _gate_table(gate: dict[str, Any]) -> str:
    rows = [[html.escape(c["name"]), _fmt(c["value"]), html.escape(c["target"]),
             '<span class="pass">pass</span>' if c["passed"] else '<span class="fail">fail</span>']
            for c in gate["checks"]]
    return _table(["requirement", "measured", "target", "result"], rows)


def write_report(path: str | Path, ctx: dict[str, Any]) -> Path:
    """Write the report. ``ctx`` holds what the run produced (see ``Loop``): title, version, data
    report, leaderboard, history, metrics, class names, gate, and optionally a comparison."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = ctx["class_names"]
    parts = [f"<h1>{html.escape(ctx['title'])}</h1>",
             f"<p>Model version <code>{html.escape(ctx['version'])}</code> · family "
             f"<code>{html.escape(ctx['family'])}</code> · dataset <code>{html.escape(ctx['fingerprint'])}</code>"
             + (f" · parent <code>{html.escape(ctx['parent'])}</code>" if ctx.get("parent") else "") + "</p>"]
    if ctx.get("decision"):
        d = ctx["decision"]
        cls = "pass" if d["decision"] == "promoted" else "fail"
        parts.append(f"<h2>Gate decision: <span class='{cls}'>{d['decision']}</span></h2>")
        parts.append("<ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in d["reasons"]) + "</ul>")
        parts.append(_table(["", d["metric"] + " (test)"],
                            [["champion " + html.escape(ctx.get("parent") or ""), _fmt(d["champion_value"])],
                             ["challenger " + html.escape(ctx["version"]), _fmt(d["challenger_value"])]]))
        fb = d.get("feedback")
        if d.get("kind") == "regression":
            for where, ev in (("test rows", d["test"]), ("held-out feedback examples", fb)):
                if ev:
                    parts.append(f"<p>Paired squared errors on {ev['n']} {where}: RMSE champion "
                                 f"{ev['champion_rmse']:.4g}, challenger {ev['challenger_rmse']:.4g}; the challenger "
                                 f"is closer on {ev['challenger_closer']}, the champion on {ev['champion_closer']} "
                                 f"(Wilcoxon: challenger better p = {ev['p_challenger_better']:.3g}, worse p = "
                                 f"{ev['p_challenger_worse']:.3g}).</p>")
            fb = None
        else:
            m = d["mcnemar"]
            parts.append(f"<p>Paired comparison on {d['test_examples']} test examples: only the champion right on "
                         f"{m['only_champion_right']}, only the challenger right on {m['only_challenger_right']} "
                         f"(McNemar exact p = {m['p_value']:.3g}). Feedback examples used: "
                         f"{ctx.get('feedback_examples', 0)}.</p>")
        if fb:
            parts.append(f"<p>On {fb['n']} held-out feedback examples: champion {fb['champion_accuracy']:.4f}, "
                         f"challenger {fb['challenger_accuracy']:.4f} (challenger better p = "
                         f"{fb['p_challenger_better']:.3g}, worse p = {fb['p_challenger_worse']:.3g}); "
                         f"{fb['contradicted_by_both']} labels contradict both models.</p>")
    semi = ctx.get("semi_supervised")
    if semi and semi.get("used"):
        parts.append(f"<p>Unlabelled served inputs learned from (pseudo-labels, never validated or gated on): "
                     f"{semi['unlabelled_examples']}; confidence threshold {semi['threshold']:g}; "
                     f"{semi['passed']} passed it at the best epoch.</p>")
    elif semi:
        parts.append(f"<p>Unlabelled served inputs: not used ({html.escape(str(semi.get('reason', '')))}).</p>")
    if ctx.get("monitor"):
        mon = ctx["monitor"]
        parts.append("<h2>Monitoring when retraining started</h2>" + _monitor_plot(mon))
    parts.append("<h2>Requirements</h2>" + _gate_table(ctx["gate"]))
    parts.append("<h2>Test metrics</h2>" + _metrics_table(ctx["metrics"]))
    score = "validation " + ctx.get("score_name", "val accuracy").removeprefix("val ")
    if ctx.get("predicted") is not None:
        plots = [_scatter(*ctx["predicted"], "Predicted vs true (test)")]
    else:
        plots = [_confusion(ctx["metrics"]["confusion_matrix"], names, "Confusion matrix (test)")]
    if ctx.get("history"):
        plots.insert(0, _learning_curves(ctx["history"], score))
    if ctx.get("leaderboard"):
        plots.append(_tradeoff_plot(ctx["leaderboard"], ctx.get("requirements")))
    parts.append("<div class='grid'>" + "".join(plots) + "</div>")
    if ctx.get("leaderboard"):
        rows = [[html.escape(r["candidate"]), "yes" if r.get("pretrained") else "", _fmt(r["val_accuracy"]),
                 _fmt(r["p95_ms"]), _fmt(r["size_mb"]), r.get("parameters"), r.get("trials"),
                 _fmt(r.get("featurize_s")) + " / " + _fmt(r.get("search_s")), html.escape(r.get("decision", ""))]
                for r in ctx["leaderboard"]]
        parts.append("<h2>Technology selection (validation split)</h2>"
                     + _table(["candidate", "pretrained", ctx.get("score_name", "val accuracy"), "p95 ms", "size MB",
                               "parameters", "trials",
                               "features / search s", "decision"], rows))
        if ctx.get("selection_warning"):
            parts.append(f"<p class='fail'>{html.escape(ctx['selection_warning'])}</p>")
        if ctx.get("excluded"):
            parts.append("<ul>" + "".join(f"<li><code>{html.escape(k)}</code>: {html.escape(v)}</li>"
                                          for k, v in ctx["excluded"].items()) + "</ul>")
    if ctx.get("trials"):
        # A distributed search records the node that ran each trial (its first 12 characters suffice).
        nodes = any(r.get("node") for r in ctx["trials"])
        rows = [[html.escape(r["candidate"]), r["trial"], r["state"], _fmt(r["val_accuracy"]), r.get("epochs"),
                 r.get("seconds"), *([html.escape(str(r.get("node") or "-")[:12])] if nodes else []),
                 f"<code>{html.escape(json.dumps(r['params']))}</code>"] for r in ctx["trials"]]
        parts.append("<h3>Search trials</h3>" + _table(["candidate", "trial", "state", "val accuracy", "epochs",
                                                         "seconds", *(["node"] if nodes else []),
                                                         "hyper-parameters"], rows))
    if ctx.get("latency"):
        lat = ctx["latency"]
        parts.append(f"<h2>Serving cost</h2><p>Single-image latency p50 {lat['p50_ms']:.2f} ms, "
                     f"p95 {lat['p95_ms']:.2f} ms; weights {ctx.get('size_mb', 0):.3f} MB.</p>")
    if ctx.get("serving"):
        sv = ctx["serving"]
        rows = [[html.escape(r["backend"]) + (" <b>(chosen)</b>" if r["backend"] == sv["backend"] else ""),
                 _fmt(r.get("p50_ms_batch1", "-")), _fmt(r.get("p50_ms_batch32", "-")),
                 _fmt(r.get("max_abs_diff", "-")), _fmt(r.get("accuracy", "-")),
                 "ok" if r["ok"] else html.escape(r["reason"])] for r in sv["candidates"]]
        parts.append("<h2>Serving backends</h2>" + _table(
            ["backend", "p50 ms (1 image)", "p50 ms (32 images)", "max |Δp| vs PyTorch", "val accuracy", "check"],
            rows))
    rep = ctx.get("data_report")
    if rep:
        parts.append(f"<h2>Data</h2><p>Source <code>{html.escape(rep['source'])}</code>: {rep['found']} found, "
                     f"{rep['kept']} kept, {len(rep['dropped'])} dropped."
                     + "".join(f" {label} {html.escape(str(rep[key]))}." for key, label in (
                         ("image_format", "Image format"), ("text", "Texts:"), ("audio", "Clips:"),
                         ("table", "Table:")) if rep.get(key)) + "</p>")
        cols = names if ctx.get("predicted") is None else ["rows"]
        split_rows = [[s] + [c.get(n, 0) for n in cols] for s, c in rep["split_counts"].items()]
        parts.append(_table(["split", *map(html.escape, cols)], split_rows))
        if rep["dropped"]:
            parts.append(_table(["dropped file", "reason"],
                                [[html.escape(d["file"]), html.escape(d["reason"])] for d in rep["dropped"][:200]]))
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(ctx['title'])}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>")
    path.write_text(page)
    return path


# -- the pages of tasks that write their own report (ranking tasks) ---------------------------------
def html_table(rows: list[list[Any]], head: list[str]) -> str:
    """An HTML table: floats with 4 decimals, None as "-", everything escaped."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}"
        return html.escape("-" if v is None else str(v))

    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows) + "</table>")


def requirements_table(requirements: dict[str, Any]) -> str:
    """A version's requirement checks (its manifest's ``requirements``) as an HTML table."""
    return html_table([[c["name"], c["value"], c["target"], "pass" if c["passed"] else "FAIL"]
                       for c in requirements["checks"]], ["requirement", "value", "target", "result"])


def gate_section(gate: dict[str, Any] | None) -> list[str]:
    """A retrained version's gate decision, its reasons and its evidence (test and feedback), as
    HTML fragments (none for a version without a gate)."""
    if not gate:
        return []
    return ["<h2>Gate: challenger vs champion</h2>",
            f"<p><b>{html.escape(gate['decision'])}</b>: {html.escape('; '.join(gate['reasons']))}</p>",
            f"<pre>{html.escape(json.dumps({k: gate[k] for k in ('test', 'feedback')}, indent=2))}</pre>"]


def version_line(m: dict[str, Any]) -> str:
    """A version's model, run, dataset and parent from its manifest ``m``, as one HTML paragraph."""
    return (f"<p>model <b>{html.escape(str(m['model']['candidate']))}</b> ({html.escape(m['model']['kind'])}), run "
            f"<code>{m['run_id']}</code>, dataset <code>{m['dataset']['fingerprint']}</code>, parent "
            f"{html.escape(str(m.get('parent') or '-'))}</p>")


def write_page(path: str | Path, title: str, parts: list[str]) -> None:
    """A self-contained HTML page of ``parts`` (HTML fragments) titled ``title``."""
    page = ("<!doctype html><meta charset='utf-8'><title>" + html.escape(title)
            + "</title><style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2rem auto}"
              "table{border-collapse:collapse}td,th{border:1px solid #ccd;padding:.25rem .5rem}</style>"
            + "".join(parts))
    Path(path).write_text(page)
