"""Audio clips (keyword spotting): WAV/FLAC/OGG files -> fixed-length 16 kHz mono waveforms.

Every clip goes through the same steps, in training and in serving:

1. decode with ``soundfile`` (libsndfile) to float32 in [-1, 1], any sample rate, any channels;
2. mix down to mono (mean of the channels);
3. resample to :data:`SAMPLE_RATE` with torch (a Hann-windowed sinc low-pass before
   downsampling, then linear interpolation at the exact sample times);
4. trim leading and trailing silence with the Silero voice-activity model (from the first
   detected speech to the last, plus a small margin; a clip where no speech is detected is kept
   whole);
5. centre in a window of :data:`CLIP_SAMPLES` samples (1 s), zero-padded or centre-cropped.

The result is a float32 array (1, CLIP_SAMPLES): what the dataset stores, what the model's
featurizer takes, and what the server stores with each prediction so feedback becomes a training
example of exactly the same form.

Training augmentation (:func:`augment_waveforms`) makes extra copies of each training clip
once, vectorized, before featurization: speed perturbation (0.9x-1.1x, resampling, so pitch moves
with it), time shift (up to +-100 ms), gain (+-6 dB) and additive Gaussian noise (15-35 dB below
the clip's RMS).
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError, InputError

__all__ = ["SAMPLE_RATE", "CLIP_SAMPLES", "AUDIO_SUFFIXES", "MAX_SECONDS", "MAX_SAMPLE_RATE",
           "audio_info", "decode_audio", "read_audio", "resample", "trim_silence", "fix_length", "preprocess",
           "load_audio_folder", "augment_waveforms", "prepare_audio_dataset", "parse_samples"]

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
CLIP_SAMPLES = 16_000  # 1 s
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
#: libsndfile container formats accepted (WAVEX is WAV with a multichannel header)
_FORMATS = {"WAV": "WAV", "WAVEX": "WAV", "FLAC": "FLAC", "OGG": "OGG"}
#: default longest clip in seconds and highest sample rate in Hz a request may carry
#: (``serving.max_audio_seconds``, ``serving.max_audio_sample_rate``); a clip decodes to at most
#: their product in samples, all channels together
MAX_SECONDS = 60.0
MAX_SAMPLE_RATE = 192_000
MIN_SAMPLE_RATE = 4000
_EXPECTED = "a WAV, FLAC or OGG audio clip"


# -- decoding --------------------------------------------------------------------------------
def _check_header(data: bytes, max_seconds: float = MAX_SECONDS, max_sample_rate: int = MAX_SAMPLE_RATE):
    """Read a clip's header (no samples decoded) and check it. Raises ValueError saying what is wrong."""
    import soundfile as sf

    if len(data) == 0:
        raise ValueError("empty file (0 bytes)")
    try:
        info = sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise ValueError(f"corrupt or not an audio file ({e})") from None
    if info.format not in _FORMATS:
        raise ValueError(f"unsupported format {info.format!r}")
    if info.frames <= 0:
        raise ValueError("zero-length clip (0 samples)")
    if not MIN_SAMPLE_RATE <= info.samplerate <= max_sample_rate:
        raise ValueError(f"sample rate of {info.samplerate} Hz, outside {MIN_SAMPLE_RATE}-{max_sample_rate} Hz "
                         "(serving.max_audio_sample_rate)")
    if info.frames / info.samplerate > max_seconds:
        raise ValueError(f"clip of {info.frames / info.samplerate:.1f} s is longer than {max_seconds:g} s "
                         "(serving.max_audio_seconds)")
    budget = int(max_seconds * max_sample_rate)
    if info.channels < 1 or info.frames * info.channels > budget:
        raise ValueError(f"{info.channels} channels of {info.frames} samples, more than the {budget} samples a "
                         "clip may decode to (serving.max_audio_seconds x serving.max_audio_sample_rate)")
    return info


def audio_info(data: bytes, name: str = "upload", max_seconds: float = MAX_SECONDS,
               max_sample_rate: int = MAX_SAMPLE_RATE):
    """A clip's header (``soundfile.info``), checked before any sample is decoded.

    Raises:
        InputError: empty, corrupt, an unsupported format, zero-length, longer than
            ``max_seconds``, a sample rate outside 4000-``max_sample_rate`` Hz or more than
            ``max_seconds`` x ``max_sample_rate`` samples over all channels; the message names ``name``.
    """
    try:
        return _check_header(data, max_seconds, max_sample_rate)
    except ValueError as e:
        raise InputError(f"audio file {name!r}: {e}; expected {_EXPECTED}") from None


def _decode(data: bytes, max_seconds: float = MAX_SECONDS,
            max_sample_rate: int = MAX_SAMPLE_RATE) -> tuple[np.ndarray, int]:
    """Bytes -> (mono float32 samples, sample rate). Raises ValueError saying what is wrong.

    The header is checked first (length, rate, channels), so an oversized clip is never decoded.
    """
    import soundfile as sf

    _check_header(data, max_seconds, max_sample_rate)
    try:
        x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)  # (frames, channels)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise ValueError(f"corrupt audio data ({e})") from None
    if len(x) == 0:
        raise ValueError("zero-length clip (0 samples)")
    if not np.isfinite(x).all():
        raise ValueError("corrupt audio data (non-finite samples)")
    return x.mean(axis=1), int(sr)


def decode_audio(data: bytes, name: str = "upload", max_seconds: float = MAX_SECONDS,
                 max_sample_rate: int = MAX_SAMPLE_RATE) -> tuple[np.ndarray, int]:
    """Decode one WAV/FLAC/OGG clip -> (mono float32 samples (T,), sample rate).

    Raises:
        InputError: empty, zero-length, corrupt, too long (over ``max_seconds``), a sample rate
            over ``max_sample_rate``, or an unsupported format; the message names ``name``.
    """
    try:
        return _decode(data, max_seconds, max_sample_rate)
    except ValueError as e:
        raise InputError(f"audio file {name!r}: {e}; expected {_EXPECTED}") from None


def read_audio(source: bytes | str | Path, name: str | None = None, max_seconds: float = MAX_SECONDS,
               max_sample_rate: int = MAX_SAMPLE_RATE) -> np.ndarray:
    """A clip (bytes or a file path) -> the model's input, float32 (1, CLIP_SAMPLES) at 16 kHz.

    Raises:
        InputError: the file is missing or is not a usable clip (see :func:`decode_audio`).
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        name = name or str(path)
        if not path.is_file():
            raise InputError(f"audio file {name!r}: no such file; expected {_EXPECTED}")
        source = path.read_bytes()
    x, sr = decode_audio(source, name or "upload", max_seconds, max_sample_rate)
    return preprocess(x, sr)


# -- signal steps ----------------------------------------------------------------------------
def _lowpass_kernel(cutoff: float, half_width: int) -> torch.Tensor:
    """Hann-windowed sinc low-pass; ``cutoff`` as a fraction of the Nyquist frequency."""
    n = torch.arange(-half_width, half_width + 1, dtype=torch.float64)
    h = cutoff * torch.special.sinc(cutoff * n) * torch.hann_window(2 * half_width + 3, periodic=False,
                                                                     dtype=torch.float64)[1:-1]
    return (h / h.sum()).float()


def resample(x: torch.Tensor, sr_in: int, sr_out: int = SAMPLE_RATE) -> torch.Tensor:
    """Resample the last axis of ``x`` (..., T) from ``sr_in`` to ``sr_out`` Hz with torch ops."""
    if sr_in == sr_out:
        return x
    shape = x.shape
    y = x.reshape(-1, 1, shape[-1]).float()
    if sr_out < sr_in:  # anti-aliasing: cut what the lower rate cannot hold before thinning
        ratio = sr_out / sr_in
        half = int(math.ceil(8 / ratio))
        k = _lowpass_kernel(0.95 * ratio, half).view(1, 1, -1)
        y = F.conv1d(F.pad(y, (half, half), mode="replicate" if y.shape[-1] > 1 else "constant"), k)
    n_out = max(1, int(round(shape[-1] * sr_out / sr_in)))
    # output sample i is the input at time i / sr_out, i.e. position i * sr_in / sr_out: linear interpolation
    pos = (torch.arange(n_out, dtype=torch.float64) * (sr_in / sr_out)).clamp(max=shape[-1] - 1)
    i0 = pos.floor().long()
    i1 = (i0 + 1).clamp(max=shape[-1] - 1)
    frac = (pos - i0).float()
    y = y[..., i0] * (1 - frac) + y[..., i1] * frac
    return y.reshape(*shape[:-1], n_out)


_VAD: dict[str, Any] = {}
_VAD_LOCK = threading.Lock()


def _vad_model():
    """The Silero VAD model (bundled with the ``silero-vad`` package; loaded once, offline)."""
    if "model" not in _VAD:
        from silero_vad import load_silero_vad

        _VAD["model"] = load_silero_vad()
    return _VAD["model"]


def trim_silence(x: np.ndarray, margin_ms: float = 60.0) -> tuple[np.ndarray, bool]:
    """Cut a 16 kHz mono clip (T,) to its speech (first start to last end, plus ``margin_ms``).

    Returns (the trimmed clip, whether speech was found). A clip with no detected speech is
    returned whole.
    """
    from silero_vad import get_speech_timestamps

    with _VAD_LOCK:  # the model keeps state between windows: one clip at a time
        ts = get_speech_timestamps(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), _vad_model(),
                                   sampling_rate=SAMPLE_RATE, min_speech_duration_ms=60, speech_pad_ms=0)
    if not ts:
        return x, False
    pad = int(SAMPLE_RATE * margin_ms / 1000)
    start, end = max(0, ts[0]["start"] - pad), min(len(x), ts[-1]["end"] + pad)
    return x[start:end], True


def fix_length(x: np.ndarray, n: int = CLIP_SAMPLES) -> np.ndarray:
    """Centre (T,) in ``n`` samples: zero-pad both sides equally, or crop the middle."""
    t = len(x)
    if t >= n:
        start = (t - n) // 2
        return np.ascontiguousarray(x[start : start + n], dtype=np.float32)
    out = np.zeros(n, dtype=np.float32)
    start = (n - t) // 2
    out[start : start + t] = x
    return out


def preprocess(x: np.ndarray, sr: int, vad: bool = True) -> np.ndarray:
    """Mono samples (T,) at ``sr`` Hz -> float32 (1, CLIP_SAMPLES): resampled, trimmed, centred."""
    x = np.asarray(x, dtype=np.float32)
    if sr != SAMPLE_RATE:
        x = resample(torch.from_numpy(x), sr, SAMPLE_RATE).numpy()
    if vad and len(x) >= 512:  # the VAD needs one 32 ms window
        x, _ = trim_silence(x)
    return fix_length(x)[None]


def parse_samples(samples: Any, sample_rate: Any, field: str = "samples", max_seconds: float = MAX_SECONDS,
                  max_sample_rate: int = MAX_SAMPLE_RATE) -> np.ndarray:
    """JSON samples (a list of numbers, -1..1) at ``sample_rate`` -> float32 (1, CLIP_SAMPLES).

    Raises:
        InputError: ``samples`` is not a non-empty flat list of finite numbers (booleans and
            strings are not samples) or is longer than ``max_seconds``, or the sample rate is not
            an integer from 4000 to ``max_sample_rate``.
    """
    from .image import json_type

    rate_field = "sample_rate" if field == "samples" else field.replace("samples", "sample_rate")
    got = json_type(sample_rate)
    if isinstance(sample_rate, float) and sample_rate.is_integer() and abs(sample_rate) < 1e9:
        sample_rate = int(sample_rate)  # 16000.0 is an integer in JSON
    if (isinstance(sample_rate, bool) or not isinstance(sample_rate, int)
            or not MIN_SAMPLE_RATE <= sample_rate <= max_sample_rate):
        raise InputError(f"field {rate_field!r}: received {got}; expected an integer sample rate in Hz "
                         f"between {MIN_SAMPLE_RATE} and {max_sample_rate} (e.g. 16000)")
    if not isinstance(samples, list) or not samples:
        got = "an empty list" if isinstance(samples, list) else json_type(samples)
        raise InputError(f"field {field!r}: received {got}; expected a non-empty list of audio samples "
                         "(numbers from -1 to 1)")
    if len(samples) > max_seconds * sample_rate:
        raise InputError(f"field {field!r}: received {len(samples)} samples ({len(samples) / sample_rate:.1f} s); "
                         f"expected at most {max_seconds:g} s of audio (serving.max_audio_seconds)")
    bad = next((i for i, v in enumerate(samples)
                if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.number))), None)
    if bad is not None:
        bad = samples[bad]
        raise InputError(f"field {field!r}: received {json_type(bad)} among the samples; expected a flat list of "
                         "finite numbers (audio samples from -1 to 1)")
    try:
        x = np.asarray(samples, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        x = None
    if x is None or x.ndim != 1 or not np.isfinite(x).all():
        raise InputError(f"field {field!r}: received something other than a flat list of finite numbers; "
                         "expected audio samples from -1 to 1")
    return preprocess(x.astype(np.float32), sample_rate)


# -- folders and datasets --------------------------------------------------------------------
@dataclass
class FolderAudio:
    x: np.ndarray  # (N, 1, CLIP_SAMPLES) float32
    y: np.ndarray  # (N,) int64
    class_names: list[str]
    files: list[str]
    dropped: list[dict[str, str]]
    no_speech: int  # clips where the VAD found no speech (kept whole)


def load_audio_folder(root: str | Path, on_bad_file: str = "drop") -> FolderAudio:
    """Read ``root/<class>/<clip>.{wav,flac,ogg}`` into fixed-length 16 kHz waveforms.

    Files with another suffix are dropped with their reason; unusable clips (empty, zero-length,
    corrupt, unsupported format, silent) too, or (``on_bad_file='error'``) they stop the load. Identical clips after
    preprocessing are dropped as duplicates.

    Raises:
        DataError: the folder is missing or empty, has fewer than two class subfolders, has no
            usable clip, or (with ``on_bad_file='error'``) holds an unusable file.
    """
    root = Path(root)
    expected = "a folder of class subfolders of audio clips (WAV/FLAC/OGG), e.g. made by 'modelloop data keywords'"
    if not root.exists():
        raise DataError(f"data source {str(root)!r}: no such folder; expected {expected}")
    if not root.is_dir():
        raise DataError(f"data source {str(root)!r}: is a file; expected {expected}")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(class_dirs) < 2:
        found = f"found 1 class subfolder ({class_dirs[0].name!r})" if class_dirs else "no class subfolders found"
        raise DataError(f"data source {str(root)!r}: {found}; expected at least 2 class subfolders of audio clips")

    xs, ys, files, dropped = [], [], [], []
    seen: dict[bytes, int] = {}
    no_speech = 0
    for label, cdir in enumerate(class_dirs):
        for f in sorted(p for p in cdir.rglob("*") if p.is_file() and not p.name.startswith(".")):
            if f.suffix.lower() not in AUDIO_SUFFIXES:  # not a clip: listed, never fatal (like image folders)
                dropped.append({"file": str(f), "reason": f"unsupported format (suffix {f.suffix!r})"})
                continue
            else:
                try:
                    raw, sr = _decode(f.read_bytes())
                    reason = ""
                except ValueError as e:
                    reason = str(e)
                if not reason and float(np.abs(raw).max()) == 0.0:
                    reason = "silent clip (every sample = 0)"
            if reason:
                if on_bad_file == "error":
                    raise DataError(f"audio file {str(f)!r}: {reason}; expected {_EXPECTED}")
                dropped.append({"file": str(f), "reason": reason})
                continue
            x = raw if sr == SAMPLE_RATE else resample(torch.from_numpy(raw), sr).numpy()
            trimmed, speech = trim_silence(x) if len(x) >= 512 else (x, False)
            no_speech += not speech
            clip = fix_length(trimmed)
            key = hashlib.sha1(clip.tobytes()).digest()
            if key in seen:
                j = seen[key]
                same = ys[j] == label
                dropped.append({"file": str(f), "reason": f"duplicate of {files[j]}" + (
                    "" if same else f" with a different label ({cdir.name!r} vs {class_dirs[ys[j]].name!r})")})
                continue
            seen[key] = len(xs)
            xs.append(clip[None])
            ys.append(label)
            files.append(str(f))
    if not xs:
        raise DataError(f"data source {str(root)!r}: no usable clips in its class subfolders; expected {_EXPECTED}s")
    return FolderAudio(np.stack(xs), np.array(ys, dtype=np.int64), [c.name for c in class_dirs], files, dropped,
                       no_speech)


def augment_waveforms(x: torch.Tensor, copies: int, seed: int = 0, max_shift_s: float = 0.1,
                      speed: tuple[float, float] = (0.9, 1.1), gain_db: float = 6.0,
                      snr_db: tuple[float, float] = (15.0, 35.0), chunk: int = 256) -> torch.Tensor:
    """``copies`` randomly perturbed copies of every clip, (N, 1, T) -> (copies * N, 1, T).

    Copy ``k`` of clip ``i`` is row ``k * N + i``. Each copy gets its own speed factor and time
    shift (one resampling through ``grid_sample``), gain and Gaussian noise at a random SNR.
    Deterministic for a given ``seed``.
    """
    x = torch.as_tensor(x, dtype=torch.float32)
    n, _, t = x.shape
    if copies <= 0 or n == 0:
        return x.new_zeros((0, 1, t))
    g = torch.Generator().manual_seed(seed)
    out = []
    src = x.repeat(copies, 1, 1)  # (copies*N, 1, T)
    m = len(src)
    rate = torch.empty(m).uniform_(*speed, generator=g)
    shift = torch.empty(m).uniform_(-max_shift_s, max_shift_s, generator=g) * SAMPLE_RATE
    gain = 10 ** (torch.empty(m).uniform_(-gain_db, gain_db, generator=g) / 20)
    snr = torch.empty(m).uniform_(*snr_db, generator=g)
    pos = torch.arange(t, dtype=torch.float32)
    centre = (t - 1) / 2
    for a in range(0, m, chunk):
        b = min(m, a + chunk)
        # output sample p reads the source at centre + (p - centre) * rate - shift
        where = centre + (pos[None] - centre) * rate[a:b, None] - shift[a:b, None]  # (c, T)
        gx = where / (t - 1) * 2 - 1
        grid = torch.stack([gx, torch.zeros_like(gx)], dim=-1)[:, None]  # (c, 1, T, 2)
        y = F.grid_sample(src[a:b, :, None, :], grid, mode="bilinear", padding_mode="zeros",
                          align_corners=True)[:, :, 0]  # (c, 1, T)
        y = y * gain[a:b, None, None]
        rms = y.pow(2).mean(dim=(1, 2), keepdim=True).sqrt().clamp_min(1e-4)
        noise = torch.randn(y.shape, generator=g) * rms * 10 ** (-snr[a:b, None, None] / 20)
        out.append((y + noise).clamp_(-1.0, 1.0))
    return torch.cat(out)


def prepare_audio_dataset(data, base_dir: str | Path = "."):
    """Load, validate, clean and split an audio folder; add augmented copies to the training split.

    The validation and test splits hold only original clips; the training split holds the
    originals followed by ``data.augmentation.copies`` perturbed copies of each
    (:func:`augment_waveforms`), made once with the spec's split seed.

    Raises:
        DataError: the source is missing, empty or unreadable, or a class has fewer than 2 clips.
    """
    from .dataset import SPLITS, DataReport, Dataset, fingerprint, stratified_split

    source = data.source
    if source.startswith("builtin:"):
        raise DataError(f"field 'data.source': received {source!r}; expected a folder of class subfolders of audio "
                        "clips for audio-classification (make one with 'modelloop data keywords OUT')")
    path = Path(source)
    if not path.is_absolute():
        path = Path(base_dir) / path
    f = load_audio_folder(path, data.on_bad_file)
    counts = np.bincount(f.y, minlength=len(f.class_names))
    few = [(c, int(n)) for c, n in zip(f.class_names, counts, strict=True) if n < 2]
    if few:
        detail = ", ".join(f"class folder {str(path / c)!r} has {n} usable clip{'s' if n != 1 else ''}"
                           for c, n in few)
        raise DataError(f"data source {str(path)!r}: {detail}; expected at least 2 clips per class")
    idx = stratified_split(f.y, {"test": data.split.test, "val": data.split.validation}, data.split.seed)
    splits = {s: (torch.from_numpy(np.ascontiguousarray(f.x[idx[s]])), torch.from_numpy(f.y[idx[s]]))
              for s in SPLITS}
    copies = int(getattr(data.augmentation, "copies", 0))
    xtr, ytr = splits["train"]
    if copies:
        splits["train"] = (torch.cat([xtr, augment_waveforms(xtr, copies, seed=data.split.seed)]),
                           ytr.repeat(copies + 1))
    names = f.class_names
    report = DataReport(
        source=source, found=len(f.y) + len(f.dropped), kept=len(f.y), dropped=f.dropped,
        class_counts={c: int(n) for c, n in zip(names, counts, strict=True)},
        split_counts={s: {c: int(n) for c, n in zip(names, np.bincount(f.y[idx[s]], minlength=len(names)),
                                                    strict=True)} for s in SPLITS},
        audio={"sample_rate": SAMPLE_RATE, "clip_samples": CLIP_SAMPLES, "no_speech_detected": f.no_speech,
               "augmented_copies": copies, "train_clips_with_copies": int(len(splits["train"][1])),
               "augmentation": "speed 0.9-1.1x, time shift +-100 ms, gain +-6 dB, noise at 15-35 dB SNR"
               if copies else "none"},
    )
    return Dataset(splits, names, None, report, fingerprint(splits, names), kind="audio")
