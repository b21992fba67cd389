"""Serving benchmark: ``modelloop serve`` against a minimal FastAPI endpoint, same model, same machine.

Both servers run on loopback, one at a time, driven by wrk (Debian ``wrk``) with the same JSON
request (one 28x28 digit) at concurrency 1 and 32, for a bounded time each. Prints requests/s,
p50 and p99 for each and the ratios modelloop / minimal, with the load average and CPU model.

    python bench/serve.py [--project DIR] [--seconds 10] [--backends recorded,torch]
                          [--acks commit,before-commit]

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


def wrk(port: int, body_file: Path, connections: int, seconds: int) -> dict[str, float]:
    lua = body_file.with_suffix(".lua")
    lua.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                   f'local f = io.open("{body_file}", "r")\nwrk.body = f:read("*a")\nf:close()\n')
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
    args = ap.parse_args()
    acks = args.acks.split(",")
    if not set(acks) <= {"commit", "before-commit"}:
        sys.exit(f"--acks: received {args.acks!r}; expected commit and/or before-commit")
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk (or: make bench-serve)")
    project = build_project(args.project)
    champion = json.loads((project / "registry" / "registry.json").read_text())["aliases"]["champion"]
    version_dir = project / "registry" / "versions" / champion
    recorded = json.loads((version_dir / "manifest.json").read_text()).get("serving", {}).get("backend", "torch")

    from modelloop.data.builtin import seed_case_traffic

    x, _ = seed_case_traffic()
    tmp = Path(tempfile.mkdtemp(prefix="modelloop-bench-"))
    body = tmp / "body.json"
    body.write_text(json.dumps({"pixels": np.asarray(x[0]).reshape(-1).astype(int).tolist()}))

    servers = [("minimal FastAPI (torch eager)", None, None)]
    for b in args.backends.split(","):
        for ack in acks:
            label = (recorded if b == "recorded" else b) + (", ack before commit" if ack == "before-commit" else "")
            servers.append((f"modelloop serve ({label})", None if b == "recorded" else b, ack))
    load_before = os.getloadavg()
    results: dict[tuple[str, int], dict[str, float]] = {}
    for i, (name, backend, ack) in enumerate(servers):
        port = free_port()
        if i == 0:
            cmd = [sys.executable, str(ROOT / "bench" / "minimal_server.py"), str(version_dir), str(port)]
        else:
            cmd = [str(BIN / "modelloop"), "serve", str(project), "--port", str(port)]
            if backend:
                cmd += ["--backend", backend]
        proc = start(cmd, port, {"MODELLOOP_ACK": ack} if ack else None)
        try:
            for c in (1, 32):
                results[(name, c)] = wrk(port, body, c, args.seconds)
                print(f"  {name:38s} c={c:<3d} {results[(name, c)]}", file=sys.stderr)
        finally:
            stop(proc)
    base = servers[0][0]
    load_after = os.getloadavg()
    print(f"\nServing benchmark: seed-case CNN ({champion}, recorded backend {recorded}), wrk {args.seconds}s per "
          f"cell, loopback, {describe()}, load average (1/5/15 min) "
          f"{'/'.join(f'{v:.2f}' for v in load_before)} before, {'/'.join(f'{v:.2f}' for v in load_after)} after\n")
    print("| server | concurrency | requests/s | p50 ms | p99 ms | errors | throughput vs minimal |")
    print("|---|---|---|---|---|---|---|")
    for name, _, _ in servers:
        for c in (1, 32):
            r = results[(name, c)]
            ratio = r["rps"] / results[(base, c)]["rps"]
            print(f"| {name} | {c} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} | "
                  f"{ratio:.2f}x |")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
