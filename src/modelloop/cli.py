"""The ``modelloop`` command line.

Every command takes ``--json`` and then prints one JSON object to stdout; progress and logs go to
stderr. Exit codes: 0 done, 1 a gate or requirement not met (or, for ``retrain``, nothing new to
learn), 2 bad input or usage (or the project busy with another writer: the message names it).
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import rich.markup
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from .errors import ModelloopError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="modelloop: from raw data to a served model that keeps learning from its users.")
err = Console(stderr=True)
out = Console()

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object to stdout.")]
RayOpt = Annotated[str | None, typer.Option(
    "--ray", metavar="auto|HOST:PORT|local",
    help="Fit and search on this Ray cluster (needs pip install 'modelloop[ray]'): 'auto' joins the cluster this "
         "machine is part of, HOST:PORT a head node, 'local' starts a private one for this command. Overrides "
         "the spec's compute section.")]
WaitOpt = Annotated[bool, typer.Option("--wait", help="If another run, retrain or watch holds the project, wait "
                                                      "for it instead of exiting with code 2.")]
DirArg = Annotated[Path, typer.Argument(help="Project folder (holds modelloop.yaml).")]


def _logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=False, show_time=False)], force=True)
    for noisy in ("httpx", "uvicorn.access", "optuna", "onnx_ir", "onnxscript", "torch.onnx", "torch.export",
                  "torch._export"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _progress(msg: str) -> None:
    err.print(msg, style="dim", markup=False, highlight=False)


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def _command(fn):
    """Turn ModelloopError into a one-line message and exit code 2 (also as JSON with --json)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        as_json = kwargs.get("as_json", False)
        _logging(quiet=as_json)
        try:
            return fn(*args, **kwargs)
        except ModelloopError as e:
            if as_json:
                _emit({"error": str(e), "type": type(e).__name__})
            # The message is text, not markup: "modelloop[ray]" or "[0, 1]" must print as written.
            err.print(f"[bold red]error:[/bold red] {rich.markup.escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None

    return wrapper


@app.command()
@_command
def init(
    directory: DirArg,
    task: Annotated[str, typer.Option(help="The task: image-classification, text-classification, "
                                           "audio-classification, tabular-classification, tabular-regression, "
                                           "recommendation or faq (answers from an FAQ).")] = (
        "image-classification"),
    data: Annotated[str | None, typer.Option(help="Images: a folder of class subfolders, or builtin:seed-case / "
                                             "builtin:mnist784. Texts: a CSV/TSV/JSONL/Parquet file, or "
                                             "builtin:rotten-tomatoes. Audio: a folder of class subfolders of "
                                             "WAV/FLAC/OGG clips (see 'modelloop data keywords'). Default: the "
                                             "task's built-in example.")] = None,
    text_column: Annotated[str | None, typer.Option(help="Text files: the column holding the text.")] = None,
    label_column: Annotated[str | None, typer.Option(help="Text files: the column holding the label.")] = None,
    metric: Annotated[str | None, typer.Option(help="Requirement metric (accuracy, f1_macro, ...).")] = None,
    target: Annotated[float | None, typer.Option(help="Requirement: metric on the test split >= target.")] = None,
    p95_latency_ms: Annotated[float | None, typer.Option(help="Requirement: p95 single-item latency.")] = None,
    max_model_size_mb: Annotated[float | None, typer.Option(help="Requirement: model size budget.")] = None,
    time_budget_s: Annotated[float | None, typer.Option(help="Training time budget in seconds.")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing modelloop.yaml.")] = False,
    user_column: Annotated[str | None, typer.Option(help="Recommendation: the user id column.")] = None,
    item_column: Annotated[str | None, typer.Option(help="Recommendation: the item id column.")] = None,
    rating_column: Annotated[str | None, typer.Option(help="Recommendation: the rating column ('none': implicit "
                                                           "data, every row counts 1).")] = None,
    timestamp_column: Annotated[str | None, typer.Option(help="Recommendation: the time column (the latest "
                                                              "duplicate (user, item) row wins).")] = None,
    items: Annotated[str | None, typer.Option(help="Recommendation: an item table with texts (titles, "
                                                   "genres).")] = None,
    item_id_column: Annotated[str | None, typer.Option(help="Recommendation: the item id column of --items "
                                                            "(default: --item-column).")] = None,
    item_text_columns: Annotated[str | None, typer.Option(help="Recommendation: comma-separated text columns of "
                                                               "--items.")] = None,
    id_column: Annotated[str | None, typer.Option(help="FAQ: the entry id column (absent: the row number).")] = None,
    question_column: Annotated[str | None, typer.Option(help="FAQ: the entry question column.")] = None,
    answer_column: Annotated[str | None, typer.Option(help="FAQ: the entry answer column.")] = None,
    examples: Annotated[str | None, typer.Option(help="FAQ: example customer questions (columns query and id; an "
                                                      "empty id: no entry answers it), or builtin:faq-example.")
                        ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write DIR/modelloop.yaml: data source, task and requirements."""
    from .project import Project

    task_opts = {"text_column": text_column, "label_column": label_column, "user_column": user_column,
                 "item_column": item_column, "rating_column": rating_column, "timestamp_column": timestamp_column,
                 "items": items, "item_id_column": item_id_column, "item_text_columns": item_text_columns,
                 "id_column": id_column, "question_column": question_column, "answer_column": answer_column,
                 "examples": examples}
    p = Project.init(directory, task=task, data=data, overwrite=force, metric=metric, target=target,
                     p95_latency_ms=p95_latency_ms, max_model_size_mb=max_model_size_mb, time_budget_s=time_budget_s,
                     **{k: v for k, v in task_opts.items() if v is not None})
    spec_path = p.path / "modelloop.yaml"
    if as_json:
        _emit({"spec": str(spec_path), "spec_content": p.loop.spec.to_dict()})
    else:
        out.print(f"wrote {spec_path}\nnext: modelloop run {directory}")


def _ray_address(value: str | None) -> str | None:
    """``--ray``'s value, checked: 'auto', 'local', HOST:PORT or ray://HOST:PORT."""
    from .errors import InputError

    if value is None or value in ("auto", "local"):
        return value
    host, _, port = value.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"option '--ray': received {value!r}; expected 'auto', 'local', HOST:PORT or "
                         "ray://HOST:PORT")
    return value


@app.command()
@_command
def run(directory: DirArg,
        resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run (one interrupted after "
                                                               "registering its version is finished, not retrained).")
                          ] = False,
        wait: WaitOpt = False,
        ray: RayOpt = None,
        as_json: JsonOpt = False) -> None:
    """Validate data, select and train a model, evaluate, gate and register it."""
    from .project import Project

    project = Project(directory, ray=_ray_address(ray))
    res = project.run(resume=resume, progress=_progress, wait=wait)
    if as_json:
        _emit({k: res[k] for k in ("version", "run_id", "metrics", "val_metrics", "champion", "passed", "gate",
                                   "report", "family", "dataset", "latency", "size_mb")})
    else:
        out.print(f"version {res['version']} ({res['family']}): test {_headline(project, res['metrics'])}; "
                  f"requirements {'met' if res['passed'] else 'NOT met'}"
                  f"{'; champion' if res['champion'] else ''}\nreport: {res['report']}")
    if not res["passed"]:
        raise typer.Exit(1)


@app.command()
@_command
def retrain(directory: DirArg,
            force: Annotated[bool, typer.Option("--force", help="Retrain even when there is no feedback the latest "
                                                                "version has not learned from.")] = False,
            wait: WaitOpt = False,
            ray: RayOpt = None,
            as_json: JsonOpt = False) -> None:
    """Train a challenger on training data + feedback; promote it only if the gate passes."""
    from .project import Project

    res = Project(directory, ray=_ray_address(ray)).retrain(progress=_progress, force=force, wait=wait)
    if res["decision"] == "skipped":  # nothing new to learn: say why, exit 1
        if as_json:
            _emit({k: res[k] for k in ("version", "parent", "decision", "reason", "feedback_rows",
                                       "feedback_examples", "champion_version")})
        else:
            out.print(f"not retrained: {res['reason']}\nchampion: {res['champion_version']} "
                      "(pass --force to retrain anyway)")
        raise typer.Exit(1)
    if as_json:
        _emit({k: res[k] for k in ("version", "parent", "feedback_examples", "feedback_validation",
                                   "feedback_holdout", "decision",
                                   "evidence", "champion_metrics", "challenger_metrics", "champion_version",
                                   "report")})
    else:
        out.print(f"challenger {res['version']} (parent {res['parent']}, {res['feedback_examples']} feedback "
                  f"examples): {res['decision']}\n  " + "\n  ".join(res["evidence"]["reasons"])
                  + f"\nchampion: {res['champion_version']}\nreport: {res['report']}")
    if res["decision"] != "promoted":
        raise typer.Exit(1)


def _headline(project, m: dict[str, Any]) -> str:
    """The test metrics worth one line (the task's headline: accuracy and F1, RMSE and R², NDCG@10, ...)."""
    return project.loop.task.headline(m)


def _models_table(rows: list[dict[str, Any]]) -> Table:
    """Versions with the two test metrics their task is judged by (each row's ``headline``)."""
    import datetime as dt

    t = Table(title="model versions")
    names = [n for n, _ in rows[0]["headline"]] if rows else ["accuracy", "F1 macro"]
    for col in ("version", "alias", "family", *names, "parent", "feedback", "dataset", "gate", "created"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["version"], ",".join(r["aliases"]), r["family"],
                  *("-" if v is None else f"{v:.4g}" if n == "RMSE" else f"{v:.4f}" for n, v in r["headline"]),
                  r["parent"] or "-", str(r["feedback_examples"]), r["dataset"], r["gate"] or "-",
                  dt.datetime.fromtimestamp(r["created_at"]).strftime("%Y-%m-%d %H:%M:%S"))
    return t


@app.command()
@_command
def models(directory: DirArg, as_json: JsonOpt = False) -> None:
    """List versions with metrics, alias, parent, dataset fingerprint and creation time."""
    from .project import Project

    p = Project(directory)
    rows = p.models()
    if as_json:
        _emit({"champion": p.loop.registry.champion(), "versions": rows})
    else:
        out.print(_models_table(rows))


@app.command()
@_command
def promote(directory: DirArg, version: Annotated[str, typer.Argument(help="e.g. v2")],
            as_json: JsonOpt = False) -> None:
    """Make VERSION the champion."""
    from .project import Project

    Project(directory).promote(version)
    _emit({"champion": version}) if as_json else out.print(f"champion: {version}")


@app.command()
@_command
def rollback(directory: DirArg, as_json: JsonOpt = False) -> None:
    """Make the previous champion the champion again."""
    from .project import Project

    v = Project(directory).rollback()
    _emit({"champion": v}) if as_json else out.print(f"champion: {v}")


@app.command()
@_command
def predict(directory: DirArg,
            files: Annotated[list[Path] | None, typer.Argument(help="Image files (image models) or audio "
                                                                 "clips (audio models).")] = None,
            text: Annotated[list[str] | None, typer.Option("--text", help="A text to classify (text models); "
                                                           "repeat for several.")] = None,
            row: Annotated[list[str] | None, typer.Option("--row", help="A table row as JSON, e.g. "
                                                          "'{\"age\": 41, \"plan\": \"pro\"}' (tabular "
                                                          "models); repeat for several.")] = None,
            as_json: JsonOpt = False) -> None:
    """Predict image files, audio clips or texts with the champion (offline; the server logs its own predictions)."""
    from .project import Project

    project = Project(directory)
    items, inputs, key = project.loop.task.offline_inputs(list(files or []), list(text or []), list(row or []))
    res = project.predict(inputs)
    if as_json:
        _emit({"predictions": [{key: i, **r} for i, r in zip(items, res, strict=True)]})
    else:
        for i, r in zip(items, res, strict=True):
            out.print(f"{i}: {r['label']}" + ("" if "value" in r else f" ({max(r['scores'].values()):.3f})"))


@app.command()
@_command
def serve(directory: DirArg, host: str = "127.0.0.1", port: int = 8000,
          max_batch_size: Annotated[int | None, typer.Option(help="Override serving.max_batch_size.")] = None,
          max_wait_ms: Annotated[float | None, typer.Option(help="Override serving.max_wait_ms.")] = None,
          backend: Annotated[str | None, typer.Option(help="Override the recorded backend (torch, "
                                                           "onnxruntime, ...).")] = None,
          workers: Annotated[str | None, typer.Option(metavar="N", help="Server processes on one port "
                                                      "(override serving.workers, default 1); more than one needs "
                                                      "a PostgreSQL feedback store.")] = None,
          as_json: JsonOpt = False) -> None:
    """Serve the champion over HTTP (FastAPI + uvicorn), with the web UI at /."""
    from .compress import BACKENDS
    from .errors import InputError
    from .project import Project

    if backend is not None and backend not in BACKENDS:
        raise InputError(f"option '--backend': received {backend!r}; expected one of {', '.join(BACKENDS)}")
    p = Project(directory)
    n = p.serving_workers(_integer(workers))  # refused before anything starts (exit 2)
    if as_json:
        _emit({"url": f"http://{host}:{port}", "champion": p.loop.registry.champion(), "workers": n})
    err.print(f"serving {p.path} on http://{host}:{port} (champion {p.loop.registry.champion()}"
              f"{f', {n} worker processes' if n > 1 else ''}); web UI at http://{host}:{port}/ ; "
              f"keys: modelloop keys {directory}", highlight=False)
    p.serve(host=host, port=port, log_level="warning", workers=n, max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms, backend=backend)


def _integer(value: str | None) -> int | str | None:
    """``value`` as an integer when it is one; else as given, for the check that names what it expected."""
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return value


@app.command()
@_command
def keys(directory: DirArg, as_json: JsonOpt = False) -> None:
    """Print the API keys the server accepts (creating the project's key file if needed)."""
    from .project import Project
    from .serve.security import keys_for

    p = Project(directory)
    found, source = keys_for(p.loop.spec.serving.keys, p.loop.paths.state / "keys.json")
    if as_json:
        _emit({"source": source, **found})
        return
    out.print(f"keys from {source}")
    for role in ("client", "admin"):
        for k in found.get(role, []):
            out.print(f"{role:6} {k}", highlight=False)
    if found.get("client"):
        out.print(f"web UI with the client key: http://127.0.0.1:8000/#key={found['client'][0]}", highlight=False)


@app.command()
@_command
def demo(directory: Annotated[Path, typer.Argument(help="Folder for the demo project.")] = Path("modelloop-demo"),
         fresh: Annotated[bool, typer.Option(help="Start over if DIR already holds a project.")] = False,
         traffic: Annotated[int, typer.Option(help="How many live requests simulated users send each round.")] = 600,
         rounds: Annotated[int, typer.Option(help="Rounds of traffic, feedback and retraining (1-5; "
                                             "recommendation and faq run one).")] = 2,
         task: Annotated[str, typer.Option(help="The case: image-classification (the founding case), "
                                           "text-classification, audio-classification, "
                                           "tabular-classification, tabular-regression, "
                                           "recommendation or faq.")] = "image-classification",
         as_json: JsonOpt = False) -> None:
    """The whole loop on the founding case (or one example per --task), with simulated users, in a few minutes."""
    from .demo import run_demo

    res = run_demo(directory, fresh=fresh, traffic=traffic, progress=_progress, task=task, rounds=rounds)
    if as_json:
        _emit(res)
        return
    t = Table(title=f"modelloop demo: {res['title']}")
    multi = "rounds" in res  # the cases served through /predict: rounds and a held-out live slice
    cols = ["version", "alias", "trained on", res["score_name"]] if multi else \
        ["version", "alias", res["score_name"], "parent", "feedback examples"]
    if multi:
        cols += [f"{res['live_name']} [95%]", "gate"]
    for col in cols:
        t.add_column(col)
    for v in res["versions"]:
        score = v.get("test_score")
        score = "-" if score is None else f"{score:.4f}"
        if multi:
            f = v["live_held_out"]
            live = "-" if f["value"] is None else \
                f"{f['value']:.3f} [{f['low']:.3f}, {'?' if f['high'] is None else format(f['high'], '.3f')}]"
            trained = v["trained_on"] + (f" ({v['pseudo_labelled']})" if v.get("pseudo_labelled") else "")
            t.add_row(v["version"], ",".join(v["aliases"]), trained, score, live, v["gate"] or "-")
        else:
            t.add_row(v["version"], ",".join(v["aliases"]), score, v["parent"] or "-", str(v["feedback_examples"]))
    out.print(t)
    if not multi:
        out.print(f"live traffic: {res['traffic_line']}")
        out.print(f"gate decision: [bold]{res['decision']}[/bold] ({'; '.join(res['reasons'])})")
    else:
        from .demo import show_figure

        out.print(f"held-out live: {res['held_out']['examples']} live examples no version was sent or trained on, "
                  "the same for every version" + ("; (N): served inputs without feedback whose pseudo-label passed "
                                                  "the threshold" if any(v.get("pseudo_labelled")
                                                                         for v in res["versions"]) else ""),
                  highlight=False)
        for r in res["rounds"]:
            q = r["queue_labels"]
            out.print(f"round {r['round']}: {r['requests']} requests served by {r['served_by']}, "
                      f"{r['user_labels']} user labels, {q['audit']} audit + {q['active']} active labels from the "
                      f"queue -> {r['retrained'] or 'no new version'} [bold]{r['decision']}[/bold] "
                      f"({'; '.join(r['reasons'])})", highlight=False)
            out.print(f"  live on all {r['served_by']} served: true {show_figure(r['live'])}; audit sample (unbiased) "
                      f"{show_figure(r['audit'])}; user feedback (biased) {show_figure(r['users'])}", highlight=False)
    out.print(f"champion: {res['champion']} (served after retrain: {res['served_after_retrain']})")
    out.print(f"reports: {', '.join(res['reports'])}\ntook {res['seconds']} s")


@app.command()
@_command
def monitor(directory: DirArg, as_json: JsonOpt = False) -> None:
    """Input drift, prediction drift and live accuracy of the champion (and the shadow, if any)."""
    from .project import Project

    res = Project(directory).loop.monitor()
    if as_json:
        _emit(res)
        return
    d, la, pd = res["drift"], res["live_accuracy"], res["prediction_drift"]
    out.print(f"champion {res['model_version']}")
    if d["statistic"] is None:
        out.print(f"input drift: not measured ({d['reason']})")
    else:
        out.print(f"input drift: {'DETECTED' if d['detected'] else 'none'} (MMD² {d['statistic']:.4g}, threshold "
                  f"{d['threshold']:.4g}, p = {d['p_value']:.3g}, {d['n_live']} live vs {d['n_reference']} reference)")
    if pd["psi"] is not None:
        out.print(f"prediction drift: PSI {pd['psi']:.3f} (threshold {pd['threshold']}): "
                  f"{'DETECTED' if pd['detected'] else 'none'}")
    audit = res.get("live_accuracy_audit")
    if audit is not None:
        if audit["value"] is None:
            out.print("live accuracy (audit sample, unbiased): no audit labels yet (label items from "
                      "'GET /label/next' or 'modelloop label DIR --export')")
        elif audit["measure"] == "rmse":
            hi = "?" if audit["high"] is None else f"{audit['high']:.4g}"
            out.print(f"live RMSE (audit sample, unbiased): {audit['value']:.4g} [{audit['low']:.4g}, {hi}] "
                      f"on {audit['n']} audit labels (95%)")
        else:
            out.print(f"live accuracy (audit sample, unbiased): {audit['value']:.3f} [{audit['low']:.3f}, "
                      f"{audit['high']:.3f}] on {audit['n']} audit labels (95% Wilson)")
    biased = " (all feedback: biased, users correct more than they confirm)" if audit is not None else ""
    if la["value"] is None:
        out.print(f"live accuracy{biased}: no labelled feedback yet")
    else:
        out.print(f"live accuracy{biased}: {la['value']:.3f} [{la['low']:.3f}, {la['high']:.3f}] on {la['n']} "
                  "labelled")
    out.print(f"feedback: {res['feedback']['new_since_last_training']} new since last training, "
              f"{res['feedback']['feedback']} rows in all")
    if res.get("abstention") and res["abstention"].get("rate") is not None:
        ab = res["abstention"]
        out.print(f"handed over to a person: {ab['abstained']} of {ab['answers']} recent answers ({ab['rate']:.0%})")
    for g in res.get("gaps") or []:
        out.print(f"gap ({g['size']} question{'s' if g['size'] != 1 else ''}): {g['example']!r}", highlight=False)
    if "shadow" in res:
        sh = res["shadow"]
        out.print(f"shadow {sh['version']}: {sh['scored']} scored, agreement {sh['agreement']}, accuracy on "
                  f"feedback {sh['shadow_accuracy']} vs served {sh['served_accuracy']} ({sh['with_feedback']})")


@app.command()
@_command
def label(directory: DirArg,
          export: Annotated[Path | None, typer.Option("--export", help="Write up to --n queue items as Label "
                                                      "Studio tasks (JSON) to this file, leased for --lease-hours.")]
          = None,
          import_: Annotated[Path | None, typer.Option("--import", help="Store the annotations of a Label Studio "
                                                       "export (JSON) as feedback with their origin.")] = None,
          n: Annotated[int, typer.Option("--n", help="Items to export (1-100).")] = 50,
          lease_hours: Annotated[float, typer.Option("--lease-hours", help="How long exported items stay reserved "
                                                     "for this export.")] = 24.0,
          as_json: JsonOpt = False) -> None:
    """Label served predictions elsewhere: export the labelling queue's items as Label Studio tasks,
    import the annotated file back (labels arrive with origin active, or audit as exported)."""
    from .errors import InputError
    from .loop.labelling import export_tasks, import_labels
    from .project import Project

    if (export is None) == (import_ is None):
        raise InputError("options: expected exactly one of --export FILE or --import FILE")
    loop = Project(directory).loop
    if export is not None:
        if not 0 < lease_hours <= 24 * 30:
            raise InputError(f"option '--lease-hours': received {lease_hours}; expected more than 0 and at most 720")
        tasks = export_tasks(loop, n, holder=f"export:{export.name}"[:128], lease_s=lease_hours * 3600)
        export.write_text(json.dumps(tasks, indent=1))
        res = {"exported": len(tasks), "file": str(export),
               "by_origin": {o: sum(1 for t in tasks if t["data"]["origin"] == o) for o in ("active", "audit")}}
        if as_json:
            _emit(res)
        else:
            out.print(f"exported {res['exported']} items to {export} ({res['by_origin']['active']} active, "
                      f"{res['by_origin']['audit']} audit), reserved for {lease_hours:g} h")
        return
    try:
        doc = json.loads(import_.read_text())
    except FileNotFoundError:
        raise InputError(f"option '--import': file {str(import_)!r} not found; expected a Label Studio JSON "
                         "export") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"option '--import': file {str(import_)!r} is not JSON ({str(e)[:120]}); expected a "
                         "Label Studio JSON export") from None
    res = import_labels(loop, doc)
    if as_json:
        _emit(res)
    else:
        out.print(f"imported {res['imported']} labels {res['by_origin']}; {res['without_annotation']} tasks "
                  "without an annotation")


@app.command()
@_command
def shadow(directory: DirArg, version: Annotated[str | None, typer.Argument(help="Version to shadow.")] = None,
           stop: Annotated[bool, typer.Option("--stop", help="Stop shadowing.")] = False,
           as_json: JsonOpt = False) -> None:
    """Let VERSION score live traffic next to the champion without answering (a running server picks it up)."""
    from .errors import InputError
    from .project import Project

    if (version is None) != stop:
        raise InputError("expected a VERSION to shadow, or --stop")
    loop = Project(directory).loop
    res = loop.shadow(None if stop else version)
    if as_json:
        _emit(res)
    else:
        out.print(f"shadow: {res['shadow'] or 'off'} (champion {res['champion']})")


@app.command()
@_command
def watch(directory: DirArg,
          once: Annotated[bool, typer.Option("--once", help="Run one policy check and exit.")] = False,
          interval: Annotated[float | None, typer.Option(help="Seconds between checks (policy.interval_s).")] = None,
          force: Annotated[bool, typer.Option("--force", help="When a trigger fires, retrain even with no feedback the "
                                                              "latest version has not learned from.")] = False,
          wait: WaitOpt = False,
          ray: RayOpt = None,
          as_json: JsonOpt = False) -> None:
    """Retrain when feedback, drift or live accuracy says so; promote or roll back by the policy.

    A round whose triggers fire but that has no new feedback to learn from does not retrain
    (action "skipped", with the reason) unless --force. Without --once, a round that finds the
    project busy with another writer is skipped, and the next round tries again.
    """
    import time as _time

    from .errors import BusyError
    from .project import Project

    while True:
        loop = Project(directory, ray=_ray_address(ray)).loop  # re-read the spec and registry each round
        try:
            res = loop.watch_once(progress=None if as_json else _progress, force=force, wait=wait)
        except BusyError as e:
            if once:
                raise
            res = {"action": "busy", "reason": str(e), "champion": loop.registry.champion()}
        if as_json:
            _emit(res)
        else:
            out.print(f"watch: {res['action']}" + (f" -> {res.get('version')} {res.get('decision')}"
                                                  if res["action"] == "retrained" else "")
                      + (f" ({res['reason']})" if res.get("reason") else "")
                      + f"; champion {res['champion']}")
        if once:
            return
        _time.sleep(interval or loop.spec.policy.interval_s)


@app.command()
@_command
def lineage(directory: DirArg,
            prediction: Annotated[str | None, typer.Option("--prediction", help="A prediction id.")] = None,
            version: Annotated[str | None, typer.Option("--version", help="A model version.")] = None,
            as_json: JsonOpt = False) -> None:
    """From a prediction (or version) to its model version, run, dataset, feedback used and parents, and back."""
    from .errors import InputError
    from .project import Project

    if (prediction is None) == (version is None):
        raise InputError("expected exactly one of --prediction ID or --version VERSION")
    res = Project(directory).loop.lineage(prediction_id=prediction, version=version)
    if as_json:
        _emit(res)
        return
    if prediction:
        out.print(f"prediction {prediction}: {res['predicted']}; feedback {len(res['feedback'])} row(s); "
                  f"trained into {', '.join(res['trained_into']) or 'no version yet'}")
    out.print(f"model {res['model_version']} <- run {res['run']} <- dataset {res['dataset_fingerprint']} "
              f"(base {res['base_dataset']} from {res['data_source']}, {len(res['feedback_ids'])} feedback examples)")
    out.print(f"parent {res['parent'] or '-'}; ancestors {', '.join(res['ancestors']) or '-'}; "
              f"children {', '.join(res['children']) or '-'}; served {res['predictions_served']} predictions")


data_app = typer.Typer(no_args_is_help=True, help="Make datasets to train on.")
app.add_typer(data_app, name="data")


@data_app.command("keywords")
@_command
def data_keywords(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write OUT/<word>/<voice>_<speed>_<pitch>.wav into.")],
    words: Annotated[str, typer.Option(help="Comma-separated words (one class folder each).")] = "yes,no,up,down",
    voices: Annotated[str, typer.Option(help="Comma-separated espeak-ng voices.")] = "en-us,en-gb,en-us+f3,en+m7",
    speeds: Annotated[str, typer.Option(help="Comma-separated speeds, words per minute.")] = "140,175,210",
    pitches: Annotated[str, typer.Option(help="Comma-separated pitches, 0-99.")] = "35,50,65",
    as_json: JsonOpt = False,
) -> None:
    """Synthesize a labelled spoken-keyword dataset (16 kHz WAV) with espeak-ng and sox."""
    from .data.keywords import make_keywords, parse_list

    res = make_keywords(out_dir, parse_list(words, "--words"), parse_list(voices, "--voices"),
                        parse_list(speeds, "--speeds", int), parse_list(pitches, "--pitches", int))
    if as_json:
        _emit(res)
    else:
        out.print(f"wrote {res['clips']} clips ({len(res['words'])} words) to {res['out']} in {res['seconds']} s\n"
                  f"next: modelloop init PROJECT --task audio-classification --data {res['out']}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
