"""A real two-node Ray cluster for the tests: a head and a worker node on 127.0.0.2, one CPU
each, memory capped, usage stats off, inside a private network namespace that has only loopback
(Ray binds some of its ports on every address it has; there, that is loopback alone). Commands
that use the cluster run inside the same namespace (:meth:`RayCluster.cli`); everything is
stopped by process id.

Needs root (``ip netns``) and Ray (``pip install 'modelloop[ray]'``, which ``make test`` installs).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
ENV = {"RAY_USAGE_STATS_ENABLED": "0", "COLUMNS": "200"}


class RayCluster:
    """``ray start --block`` for a head and a worker node in a network namespace of their own.

    Args:
        cpus: CPUs each node offers.
        memory: bytes of memory each node offers to tasks (its object store gets a tenth).
    """

    def __init__(self, cpus: int = 1, memory: int = 2_500_000_000) -> None:
        self.ns = f"mlray{os.getpid()}"
        self.address = "127.0.0.2:6379"
        # Short: Ray's unix socket paths live under it and must stay under about 100 characters.
        self.temp = tempfile.mkdtemp(prefix="mlray", dir="/tmp")
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        try:
            subprocess.run(self.prefix + ["ip", "link", "set", "lo", "up"], check=True)
            node = [f"--num-cpus={cpus}", f"--memory={memory}", f"--object-store-memory={memory // 10}",
                    "--node-ip-address=127.0.0.2", "--disable-usage-stats", "--block"]
            self._start("head", ["--head", "--port=6379", "--include-dashboard=false", f"--temp-dir={self.temp}",
                                 *node])
            self._wait_nodes(1)
            self._start("worker", [f"--address={self.address}", *node])
            self._wait_nodes(2)
        except BaseException:
            self.stop()
            raise

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns]

    def _start(self, name: str, args: list[str]) -> None:
        log = Path(self.temp) / f"{name}.log"
        self.logs.append(log)
        with open(log, "w") as f:
            self.procs.append(subprocess.Popen(self.prefix + [str(BIN / "ray"), "start", *args], stdout=f,
                                               stderr=subprocess.STDOUT, env={**os.environ, **ENV},
                                               start_new_session=True))

    def _wait_nodes(self, n: int, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for p, log in zip(self.procs, self.logs, strict=True):
                if p.poll() is not None:
                    raise RuntimeError(f"ray start exited {p.returncode}:\n{log.read_text()[-3000:]}")
            out = subprocess.run(self.prefix + [str(BIN / "ray"), "status", f"--address={self.address}"],
                                 capture_output=True, text=True, env={**os.environ, **ENV}, timeout=60).stdout
            active = out.split("Active:")[1].split("Pending:")[0] if "Active:" in out else ""
            if len(re.findall(r"\bnode_[0-9a-f]+", active)) >= n:
                return
            time.sleep(1)
        raise RuntimeError(f"the Ray cluster did not reach {n} nodes in {timeout:.0f} s")

    def popen(self, args: list[str], **kwargs) -> subprocess.Popen:
        """A process inside the cluster's network namespace."""
        return subprocess.Popen(self.prefix + args, env={**os.environ, **ENV, **kwargs.pop("env", {})}, **kwargs)

    def cli(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        """``modelloop ARGS`` inside the namespace (where 127.0.0.2 is the cluster)."""
        return subprocess.run(self.prefix + [str(BIN / "modelloop"), *map(str, args)], capture_output=True,
                              text=True, timeout=timeout, env={**os.environ, **ENV})

    def pids(self) -> list[int]:
        """Every process in the namespace: the nodes' daemons, workers and drivers."""
        out = subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def processes(self, pattern: str) -> list[int]:
        """Processes in the namespace whose command line matches ``pattern`` (e.g. Ray Train's
        worker actors, whose process title is ``ray::RayTrainWorker...``)."""
        found = []
        for pid in self.pids():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if re.search(pattern, cmd):
                found.append(pid)
        return found

    def stop(self) -> None:
        """SIGTERM to each node's process group, then SIGKILL to whatever is left in the namespace."""
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        deadline = time.time() + 10
        while (left := self.pids()) and time.time() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        subprocess.run(["ip", "netns", "del", self.ns], check=False)
        shutil.rmtree(self.temp, ignore_errors=True)
