"""Serving benchmark: ``modelloop serve`` against a minimal FastAPI endpoint, same model, same machine.

Both servers run on loopback, one at a time, driven by wrk (Debian ``wrk``) with the same
request (one 28x28 digit) at each concurrency (1 and 32 by default), for a bounded time each.
Prints requests/s, p50 and p99 for each and the ratios modelloop / minimal, with the load average
(before and after each server) and the CPU model.

    python bench/serve.py [--project DIR] [--seconds 10] [--backends recorded,torch]
                          [--acks commit,before-commit] [--concurrency 1,8,16,32] [--bodies json,npy]

``--bodies`` adds variants of each modelloop server by request body: ``json`` (``{"pixels":
[...]}``, what the minimal endpoint takes) and ``npy`` (``application/x-npy``, the same pixels
as a NumPy array, uint8).

``--acks`` adds variants of each modelloop server by when a prediction is answered: ``commit``
(the default and the contract: after its row is committed, group commit) and ``before-commit``
(``MODELLOOP_ACK=before-commit``: answered when queued, committed a moment later; not durable,
the baseline that shows what durable acknowledgements cost).

Without --project it trains a small seed-case project under bench/.work/ first.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from machine import describe  # noqa: E402

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_project(directory: Path) -> Path:
    if (directory / "registry" / "registry.json").exists():
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    subprocess.run([BIN / "modelloop", "init", directory, "--data", "builtin:seed-case"], check=True,
                   stdout=subprocess.DEVNULL)
    spec_path = directory / "modelloop.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec["selection"] = {"candidates": ["cnn"], "trials": 1}
    spec["training"] = {"max_epochs": 15}
    spec_path.write_text(yaml.safe_dump(spec))
    subprocess.run([BIN / "modelloop", "run", directory], check=True, stdout=subprocess.DEVNULL)
    return directory


def start(cmd: list[str], port: int, env: dict[str, str] | None = None) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})})
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            httpx.post(f"http://127.0.0.1:{port}/predict", json={"pixels": [0] * 784}, timeout=2)
            return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not start: {cmd}")


def stop(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


CONTENT_TYPES = {".json": "application/json", ".npy": "application/x-npy"}


def wrk(port: int, body_file: Path, connections: int, seconds: int) -> dict[str, float]:
    lua = body_file.with_suffix(body_file.suffix + ".lua")
    lua.write_text(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "{CONTENT_TYPES[body_file.suffix]}"\n'
                   f'local f = io.open("{body_file}", "rb")\nwrk.body = f:read("*a")\nf:close()\n')
    url = f"http://127.0.0.1:{port}/predict"
    subprocess.run(["wrk", "-t1", f"-c{connections}", "-d2s", "-s", str(lua), url], capture_output=True)  # warm-up
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(lua), url],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "errors": int(errors.group(1)) if errors else 0}




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, default=ROOT / "bench" / ".work" / "seed-case")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--backends", default="recorded,torch",
                    help="modelloop variants: 'recorded' (the backend chosen at registration) and/or backend names")
    ap.add_argument("--acks", default="commit",
                    help="modelloop variants by when a prediction is answered: 'commit' (after its row is "
                         "committed) and/or 'before-commit' (when queued; not durable, a baseline)")
    ap.add_argument("--concurrency", default="1,32", help="wrk connections, comma-separated")
    ap.add_argument("--bodies", default="json", help="modelloop variants by request body: json and/or npy")
    args = ap.parse_args()
    acks = args.acks.split(",")
    if not set(acks) <= {"commit", "before-commit"}:
        sys.exit(f"--acks: received {args.acks!r}; expected commit and/or before-commit")
    bodies = args.bodies.split(",")
    if not set(bodies) <= {"json", "npy"}:
        sys.exit(f"--bodies: received {args.bodies!r}; expected json and/or npy")
    try:
        levels = [int(c) for c in args.concurrency.split(",")]
    except ValueError:
        sys.exit(f"--concurrency: received {args.concurrency!r}; expected integers like 1,8,16,32")
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk (or: make bench-serve)")
    project = build_project(args.project)
    champion = json.loads((project / "registry" / "registry.json").read_text())["aliases"]["champion"]
    version_dir = project / "registry" / "versions" / champion
    recorded = json.loads((version_dir / "manifest.json").read_text()).get("serving", {}).get("backend", "torch")

    from modelloop.data.builtin import seed_case_traffic

    x, _ = seed_case_traffic()
    tmp = Path(tempfile.mkdtemp(prefix="modelloop-bench-"))
    files = {"json": tmp / "body.json", "npy": tmp / "body.npy"}
    files["json"].write_text(json.dumps({"pixels": np.asarray(x[0]).reshape(-1).astype(int).tolist()}))
    np.save(files["npy"], np.ascontiguousarray(x[0], dtype=np.uint8))

    servers = [("minimal FastAPI (torch eager)", None, None, "json")]
    for b in args.backends.split(","):
        for ack in acks:
            for kind in bodies:
                label = (recorded if b == "recorded" else b) + (", ack before commit" if ack == "before-commit" else "")
                label += ", .npy body" if kind == "npy" else ""
                servers.append((f"modelloop serve ({label})", None if b == "recorded" else b, ack, kind))
    results: dict[tuple[str, int], dict[str, float]] = {}
    loads: dict[str, str] = {}
    for i, (name, backend, ack, kind) in enumerate(servers):
        port = free_port()
        if i == 0:
            cmd = [sys.executable, str(ROOT / "bench" / "minimal_server.py"), str(version_dir), str(port)]
        else:
            cmd = [str(BIN / "modelloop"), "serve", str(project), "--port", str(port)]
            if backend:
                cmd += ["--backend", backend]
        before = os.getloadavg()[0]
        proc = start(cmd, port, {"MODELLOOP_ACK": ack} if ack else None)
        try:
            for c in levels:
                results[(name, c)] = wrk(port, files[kind], c, args.seconds)
                print(f"  {name:46s} c={c:<3d} {results[(name, c)]}", file=sys.stderr)
        finally:
            stop(proc)
        loads[name] = f"{before:.2f} / {os.getloadavg()[0]:.2f}"
    base = servers[0][0]
    print(f"\nServing benchmark: seed-case CNN ({champion}, recorded backend {recorded}), wrk {args.seconds}s per "
          f"cell, loopback, {describe()}\n")
    print("| server | concurrency | requests/s | p50 ms | p99 ms | errors | throughput vs minimal | "
          "load avg 1 min (before / after) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, _, _, _ in servers:
        for c in levels:
            r = results[(name, c)]
            ratio = r["rps"] / results[(base, c)]["rps"]
            print(f"| {name} | {c} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} | "
                  f"{ratio:.2f}x | {loads[name]} |")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
