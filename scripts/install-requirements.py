"""Install pinned requirement files into the running (virtual) environment, faster than plain pip.

Usage (run with the environment's own python):
    python scripts/install-requirements.py [-r FILE]... [--no-deps-r FILE]... [-e DIR]

Does the same as
    pip install -r FILE...              (each -r file, together)
    pip install --no-deps -r FILE...    (each --no-deps-r file)
    pip install --no-deps -e DIR
but plain pip fetches index pages and wheels one at a time and byte-compiles file by file. Here:
  1. the wheels are downloaded by several `pip download --no-deps` processes at once, in rounds:
     the pinned requirements first, then whatever their metadata requires that is not installed
     yet, until nothing is missing (pip's own index and find-links settings apply, so the same
     files are picked as by a plain install);
  2. pip installs from that folder alone (--no-index), so it resolves and installs exactly what a
     plain install would, without touching the network again;
  3. the installed files are byte-compiled on all cores (compileall) instead of by pip.
If any part of the fast path fails (an old pip, a network error, a conflict that needs pip's
resolver), it says so in one line and runs the plain pip commands instead.
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from email.parser import HeaderParser

PIP = [sys.executable, "-m", "pip"]
PIP_OPTS = ["--quiet", "--disable-pip-version-check"]
# pip download spends most of its time on the CPU (reading long release lists): about two per core.
DOWNLOAD_JOBS = min(8, 2 * (os.cpu_count() or 1))


class FastPathError(Exception):
    pass


def read_requirement_lines(path):
    lines = []
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.split(" #", 1)[0].strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("-"):
                raise FastPathError(f"{path}: option lines are not handled ({line})")
            lines.append(line)
    return lines


def wheel_metadata(path):
    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
        if len(names) != 1:
            raise FastPathError(f"{os.path.basename(path)}: no single METADATA file")
        return HeaderParser().parsestr(zf.read(names[0]).decode("utf-8"))


class Prefetcher:
    """Downloads the closure of a set of requirements into a folder, in parallel rounds."""

    def __init__(self, wheel_dir):
        from pip._vendor.packaging.requirements import Requirement
        from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename

        self.Requirement = Requirement
        self.canon = canonicalize_name
        self.parse_wheel_filename = parse_wheel_filename
        self.wheel_dir = wheel_dir
        self.chosen = {}  # name -> version (downloaded or already installed)
        self.requires = {}  # name -> list of Requirement (its Requires-Dist)
        self.specs = {}  # name -> list of SpecifierSet asked for so far
        self.extras = {}  # name -> set of extras asked for so far
        self.seen_files = set()
        self.installed = {}
        import importlib.metadata as md

        for dist in md.distributions():
            name = dist.metadata["Name"]
            if name:
                self.installed[self.canon(name)] = (dist.version, dist.requires or [])

    def _ask(self, req, pending):
        """Records one requirement; queues it for download if its project has no version yet."""
        name = self.canon(req.name)
        self.specs.setdefault(name, []).append(req.specifier)
        new_extras = {self.canon(e) for e in req.extras} - self.extras.get(name, set())
        self.extras.setdefault(name, set()).update(new_extras)
        if name in self.chosen:
            if not req.specifier.contains(self.chosen[name], prereleases=True):
                raise FastPathError(f"{name} {self.chosen[name]} does not satisfy {req}")
            if new_extras:
                self._follow(name, pending)
            return
        installed = self.installed.get(name)
        if installed and all(s.contains(installed[0], prereleases=True) for s in self.specs[name]):
            self.chosen[name] = installed[0]
            self.requires[name] = [self.Requirement(r) for r in installed[1]]
            self._follow(name, pending)
            return
        pending[name] = req

    def _follow(self, name, pending):
        """Asks for the requirements of a chosen project (for the extras asked of it)."""
        extras = self.extras.get(name, set()) | {""}
        for req in self.requires.get(name, []):
            if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in extras):
                continue
            self._ask(req, pending)

    def _combined(self, name, req):
        combined = req.specifier
        for s in self.specs[name]:
            combined &= s
        return combined

    def _download(self, specs):
        cmd = PIP + ["download", *PIP_OPTS, "--no-deps", "--only-binary", ":all:",
                     "-d", self.wheel_dir, *specs]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            last = [line for line in proc.stdout.splitlines() if line.strip() and not line.startswith("WARNING")]
            raise FastPathError(f"pip download failed: {last[-1] if last else proc.returncode}")

    def _round(self, pending, flat=()):
        names = sorted(pending)
        specs = [f"{name}{self._combined(name, pending[name])}" for name in names] + list(flat)
        jobs = min(DOWNLOAD_JOBS, len(specs))
        with ThreadPoolExecutor(jobs) as pool:
            for f in [pool.submit(self._download, specs[i::jobs]) for i in range(jobs)]:
                f.result()
        in_dir = {}  # name -> [(version, path)] of every wheel in the folder
        for fn in os.listdir(self.wheel_dir):
            if not fn.endswith(".whl"):
                raise FastPathError(f"{fn} is not a wheel")
            name, version, _, _ = self.parse_wheel_filename(fn)
            in_dir.setdefault(self.canon(name), []).append((version, os.path.join(self.wheel_dir, fn)))
        for name in names:
            spec = self._combined(name, pending[name])
            found = [(v, p) for v, p in in_dir.get(name, []) if spec.contains(v, prereleases=True)]
            if not found:
                raise FastPathError(f"no wheel of {name}{spec} came down")
            version, path = max(found)  # what pip download picked: the newest that fits
            self.chosen[name] = str(version)
            self.requires[name] = [self.Requirement(r) for r in wheel_metadata(path).get_all("Requires-Dist") or []]
        follow_up = {}
        for name in names:
            self._follow(name, follow_up)
        return follow_up

    def fetch(self, with_deps, flat):
        """with_deps: requirement lines to fetch with everything they need (that is not installed);
        flat: requirement lines to fetch alone (--no-deps ones, the editable project's build
        requirements, which pip installs into a separate build environment)."""
        pending = {}
        for line in with_deps:
            req = self.Requirement(line)
            if req.marker is None or req.marker.evaluate():
                self._ask(req, pending)
        flat = [str(self.Requirement(line)) for line in flat]
        while pending or flat:
            pending = self._round(pending, flat)
            flat = []


def build_requirements(project_dir):
    try:
        import tomllib
    except ImportError:
        return []
    path = os.path.join(project_dir, "pyproject.toml")
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        return list(tomllib.load(f).get("build-system", {}).get("requires", []))


def pip_install(args, extra):
    cmd = PIP + ["install", *PIP_OPTS, *extra, *args]
    if subprocess.run(cmd).returncode != 0:
        raise FastPathError("pip install failed: " + " ".join(args))


def install_steps(ns):
    steps = []
    if ns.requirement:
        steps.append([a for f in ns.requirement for a in ("-r", f)])
    if ns.no_deps_requirement:
        steps.append(["--no-deps"] + [a for f in ns.no_deps_requirement for a in ("-r", f)])
    if ns.editable:
        steps.append(["--no-deps", "-e", ns.editable])
    return steps


def fast_path(ns):
    wheel_dir = tempfile.mkdtemp(prefix="modelloop-wheels-")
    try:
        with_deps = [line for f in ns.requirement for line in read_requirement_lines(f)]
        no_deps = [line for f in ns.no_deps_requirement for line in read_requirement_lines(f)]
        build = build_requirements(ns.editable) if ns.editable else []
        Prefetcher(wheel_dir).fetch(with_deps, no_deps + build)
        for step in install_steps(ns):
            pip_install(step, ["--no-compile", "--no-index", "--find-links", wheel_dir])
    finally:
        shutil.rmtree(wheel_dir, ignore_errors=True)


def plain_path(ns):
    for step in install_steps(ns):
        pip_install(step, [])


def byte_compile():
    """What pip's install does file by file, on all cores (already compiled files are skipped)."""
    dirs = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    for d in sorted(dirs):
        with warnings.catch_warnings():  # as pip does: a package's odd file is not our business
            warnings.simplefilter("ignore")
            compileall.compile_dir(d, quiet=2, workers=0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-r", dest="requirement", action="append", default=[], metavar="FILE")
    parser.add_argument("--no-deps-r", dest="no_deps_requirement", action="append", default=[],
                        metavar="FILE")
    parser.add_argument("-e", dest="editable", metavar="DIR")
    parser.add_argument("--plain", action="store_true", help="just run the plain pip commands")
    ns = parser.parse_args()
    if ns.plain:
        try:
            plain_path(ns)
        except FastPathError as err:
            sys.exit(str(err))
        return
    try:
        fast_path(ns)
    except Exception as exc:  # anything at all: the plain commands are always correct
        print(f"install-requirements: fast install failed ({exc}); falling back to plain pip install",
              file=sys.stderr)
        try:
            plain_path(ns)
        except FastPathError as err:
            sys.exit(str(err))
    # after the fallback too: a fast step that installed before the failure did so without compiling
    byte_compile()


if __name__ == "__main__":
    main()
