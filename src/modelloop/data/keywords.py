"""A labelled spoken-keyword dataset, synthesized with Debian's ``espeak-ng`` and ``sox``.

Every (word, voice, speed, pitch) becomes ``OUT/<word>/<voice>_<speed>_<pitch>.wav``: espeak-ng
speaks the word (``-v voice -s speed -p pitch``) and sox converts it to 16 kHz mono 16-bit WAV.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..errors import DataError, InputError

__all__ = ["make_keywords", "parse_list"]

log = logging.getLogger(__name__)

_WORD = re.compile(r"^[a-z0-9][a-z0-9' -]{0,39}$")
_VOICE = re.compile(r"^[A-Za-z0-9_+-]{1,40}$")


def parse_list(value: str, option: str, kind: type = str) -> list[Any]:
    """A comma-separated option value -> its items (str or int). Raises InputError naming the option."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise InputError(f"option '{option}': received {value!r}; expected a comma-separated list")
    if kind is int:
        try:
            return [int(v) for v in items]
        except ValueError:
            raise InputError(f"option '{option}': received {value!r}; expected comma-separated integers") from None
    return items


def _check_tools() -> None:
    missing = [t for t in ("espeak-ng", "sox") if shutil.which(t) is None]
    if missing:
        raise DataError(f"program {', '.join(missing)}: not found on PATH; expected the Debian packages espeak-ng and "
                        "sox (apt-get install -y espeak-ng sox, or 'make system-deps')")


def _speak(word: str, voice: str, speed: int, pitch: int, out: Path) -> None:
    spoken = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", word],
                            capture_output=True, timeout=60)
    if spoken.returncode != 0 or not spoken.stdout:
        why = spoken.stderr.decode(errors="replace").strip().rstrip(".") or f"exit code {spoken.returncode}"
        raise DataError(f"espeak-ng voice {voice!r}: {why}; expected a voice listed by 'espeak-ng --voices' "
                        "(e.g. en-us, en-gb, en-us+f3, en+m7)")
    conv = subprocess.run(["sox", "-t", "wav", "-", "-r", "16000", "-c", "1", "-b", "16", str(out)],
                          input=spoken.stdout, capture_output=True, timeout=60)
    if conv.returncode != 0:
        raise DataError(f"sox converting {str(out)!r}: {conv.stderr.decode(errors='replace').strip()}; "
                        "expected a 16 kHz WAV file")


def make_keywords(out: str | Path, words: list[str], voices: list[str], speeds: list[int], pitches: list[int],
                  workers: int = 4) -> dict[str, Any]:
    """Write ``out/<word>/<voice>_<speed>_<pitch>.wav`` for every combination (16 kHz mono WAV).

    Returns ``{"out", "clips", "words", "voices", "speeds", "pitches", "seconds"}``.

    Raises:
        DataError: espeak-ng or sox is missing, a voice is unknown, or a file cannot be written.
        InputError: a word, voice, speed (80-450 words/min) or pitch (0-99) is invalid.
    """
    for w in words:
        if not _WORD.match(w):
            raise InputError(f"option '--words': received {w!r}; expected lowercase words of letters, digits, "
                             "apostrophes, spaces or hyphens (a word names its class folder)")
    if len(set(words)) < 2:
        raise InputError(f"option '--words': received {words}; expected at least 2 different words")
    for v in voices:
        if not _VOICE.match(v):
            raise InputError(f"option '--voices': received {v!r}; expected espeak-ng voice names like en-us or en+m7")
    for s in speeds:
        if not 80 <= s <= 450:
            raise InputError(f"option '--speeds': received {s}; expected words per minute from 80 to 450")
    for p in pitches:
        if not 0 <= p <= 99:
            raise InputError(f"option '--pitches': received {p}; expected pitches from 0 to 99")
    _check_tools()
    out = Path(out)
    t0 = time.perf_counter()
    jobs = []
    for w in dict.fromkeys(words):
        folder = out / w
        folder.mkdir(parents=True, exist_ok=True)
        for v in dict.fromkeys(voices):
            for s in dict.fromkeys(speeds):
                for p in dict.fromkeys(pitches):
                    jobs.append((w, v, s, p, folder / f"{v}_{s}_{p}.wav"))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for f in [pool.submit(_speak, *j) for j in jobs]:
            f.result()
    seconds = round(time.perf_counter() - t0, 2)
    log.info("wrote %d clips to %s in %.1f s", len(jobs), out, seconds)
    return {"out": str(out), "clips": len(jobs), "words": list(dict.fromkeys(words)), "voices": list(voices),
            "speeds": list(speeds), "pitches": list(pitches), "seconds": seconds}
