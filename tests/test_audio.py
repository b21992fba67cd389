"""Audio preprocessing on real synthesized speech: decoding, resampling, VAD trimming, log-mels,
augmentation, folder cleaning and the errors for unusable clips."""

from __future__ import annotations

import io
import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch

from modelloop.data.audio import (
    CLIP_SAMPLES,
    SAMPLE_RATE,
    augment_waveforms,
    decode_audio,
    load_audio_folder,
    parse_samples,
    read_audio,
    resample,
    trim_silence,
)
from modelloop.data.keywords import make_keywords
from modelloop.errors import DataError, InputError
from modelloop.tasks.audio_features import LogMelFeaturizer
from modelloop.tasks.features import featurizer_from_config


@pytest.fixture(scope="module")
def word() -> np.ndarray:
    """'yes' spoken by espeak-ng, 16 kHz mono float32."""
    wav = subprocess.run("espeak-ng -v en-us -s 175 -p 50 --stdout yes | sox -t wav - -t wav -r 16000 -c 1 -",
                         shell=True, capture_output=True, check=True).stdout
    x, sr = sf.read(io.BytesIO(wav), dtype="float32")
    assert sr == SAMPLE_RATE
    return x


def _similar(a: np.ndarray, b: np.ndarray) -> float:
    """Peak normalized cross-correlation: 1.0 for the same signal at any shift."""
    a, b = a.reshape(-1), b.reshape(-1)
    return float(np.abs(np.correlate(a, b, "full")).max() / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def _encode(x: np.ndarray, sr: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


@pytest.mark.parametrize(("fmt", "subtype"), [("WAV", "PCM_16"), ("WAV", "FLOAT"), ("FLAC", None), ("OGG", "VORBIS")])
def test_decodes_wav_flac_ogg_to_the_same_clip(word, fmt, subtype):
    clip = read_audio(_encode(word, SAMPLE_RATE, fmt, subtype), f"yes.{fmt.lower()}")
    ref = read_audio(_encode(word, SAMPLE_RATE, "WAV", "FLOAT"))
    assert clip.shape == (1, CLIP_SAMPLES) and clip.dtype == np.float32
    if fmt == "OGG":  # lossy: the VAD may cut a window earlier or later, the word is the same
        assert _similar(clip, ref) > 0.9
    else:
        assert np.abs(clip - ref).max() < 1e-3


def test_stereo_any_rate_is_mixed_resampled_and_trimmed(word):
    # 44.1 kHz stereo with 0.4 s of silence on each side, one channel at half level.
    up = resample(torch.from_numpy(word), SAMPLE_RATE, 44_100).numpy()
    pad = np.zeros(int(0.4 * 44_100), np.float32)
    mono = np.concatenate([pad, up, pad])
    stereo = np.stack([mono, 0.5 * mono], axis=1)
    x, sr = decode_audio(_encode(stereo, 44_100, "WAV", "FLOAT"))
    assert sr == 44_100 and x.ndim == 1 and np.allclose(x, 0.75 * mono, atol=1e-6)
    clip = read_audio(_encode(stereo, 44_100, "WAV", "FLOAT"))[0]
    ref = read_audio(_encode(0.75 * word, SAMPLE_RATE, "WAV", "FLOAT"))[0]
    # Same word, same place in the window: the silence was cut, the 44.1 kHz detour changed little.
    assert _similar(clip, ref) > 0.9


def test_resample_keeps_a_tone_and_removes_what_the_new_rate_cannot_hold():
    t = np.arange(48_000) / 48_000
    tone = torch.from_numpy(np.sin(2 * np.pi * 440 * t).astype(np.float32))
    alias = torch.from_numpy(np.sin(2 * np.pi * 12_000 * t).astype(np.float32))  # above 8 kHz Nyquist
    y = resample(tone, 48_000, SAMPLE_RATE)
    assert y.shape == (16_000,)
    ref = np.sin(2 * np.pi * 440 * np.arange(16_000) / 16_000)
    assert np.abs(y.numpy()[100:-100] - ref[100:-100]).max() < 0.05
    assert resample(alias, 48_000, SAMPLE_RATE)[100:-100].abs().max() < 0.05


def test_vad_trims_silence_around_speech(word):
    padded = np.concatenate([np.zeros(16_000, np.float32), word, np.zeros(16_000, np.float32)])
    trimmed, speech = trim_silence(padded)
    assert speech and len(trimmed) < len(word) + 0.3 * SAMPLE_RATE
    quiet = np.random.default_rng(0).normal(0, 1e-4, 16_000).astype(np.float32)
    same, speech = trim_silence(quiet)
    assert not speech and len(same) == len(quiet)


def test_logmel_shapes_fit_and_round_trip(word):
    clips = np.stack([read_audio(_encode(g * word, SAMPLE_RATE, "WAV", "FLOAT")) for g in (0.3, 0.6, 1.0)])
    f = featurizer_from_config({"kind": "logmel", "n_mels": 40})
    with pytest.raises(ValueError, match="not fit"):
        f.transform(clips)
    feats = f.fit(clips).transform(clips)
    assert feats.shape == (3, 1, 40, 51) and feats.dtype == torch.float32
    assert torch.allclose(feats.mean(dim=(0, 1, 3)), torch.zeros(40), atol=1e-4)  # standardized per band
    again = featurizer_from_config(f.config())
    assert isinstance(again, LogMelFeaturizer)
    assert torch.allclose(again.transform(torch.from_numpy(clips)), feats, atol=1e-5)
    assert f.transform(clips[:, 0]).shape == (3, 1, 40, 51)  # (N, T) too


def test_augmentation_makes_varied_copies(word):
    x = torch.from_numpy(np.stack([read_audio(_encode(word, SAMPLE_RATE, "WAV", "FLOAT"))] * 2))
    aug = augment_waveforms(x, copies=3, seed=0)
    assert aug.shape == (6, 1, CLIP_SAMPLES)
    assert torch.equal(aug, augment_waveforms(x, copies=3, seed=0))  # deterministic
    assert not torch.allclose(aug[0], aug[2]) and aug.abs().max() <= 1.0
    for a in aug:  # still the same word: correlated with the original after the perturbation
        assert _similar(a.numpy(), x[0].numpy()) > 0.3


def test_bad_clips_are_clear(tmp_path, word):
    for data, what in ((b"", "empty file"), (b"RIFF\x00\x00garbage-not-audio" * 10, "corrupt"),
                       (_encode(np.zeros(0, np.float32), SAMPLE_RATE, "WAV"), "zero-length"),
                       (_encode(word, SAMPLE_RATE, "AIFF"), "unsupported format 'AIFF'")):
        with pytest.raises(InputError, match=what) as e:
            decode_audio(data, "clip.bin")
        assert "'clip.bin'" in str(e.value) and "expected a WAV, FLAC or OGG" in str(e.value)
    with pytest.raises(InputError, match="no such file"):
        read_audio(tmp_path / "missing.wav")
    with pytest.raises(InputError, match="sample_rate"):
        parse_samples([0.1, 0.2], 12)
    with pytest.raises(InputError, match="empty list"):
        parse_samples([], 16_000)
    with pytest.raises(InputError, match="finite numbers"):
        parse_samples([0.1, "a"], 16_000)


def test_folder_drops_bad_files_with_reasons(tmp_path):
    root = tmp_path / "kw"
    res = make_keywords(root, ["yes", "no"], ["en-us", "en-gb"], [175], [40, 60])
    assert res["clips"] == 8 and (root / "yes" / "en-us_175_40.wav").is_file()
    (root / "yes" / "empty.wav").write_bytes(b"")
    (root / "yes" / "broken.wav").write_bytes(b"not a wav at all")
    (root / "no" / "notes.txt").write_text("hello")
    sf.write(root / "no" / "silent.wav", np.zeros(8000, np.float32), SAMPLE_RATE)
    sf.write(root / "no" / "short.wav", np.zeros(0, np.float32), SAMPLE_RATE)
    f = load_audio_folder(root)
    assert f.x.shape == (8, 1, CLIP_SAMPLES) and f.class_names == ["no", "yes"]
    reasons = {d["file"].rsplit("/", 1)[1]: d["reason"] for d in f.dropped}
    assert reasons["empty.wav"].startswith("empty file") and reasons["broken.wav"].startswith("corrupt")
    assert "unsupported format" in reasons["notes.txt"] and "silent" in reasons["silent.wav"]
    assert "zero-length" in reasons["short.wav"]
    with pytest.raises(DataError, match=r"audio file .*(short|silent)\.wav.*expected a WAV"):
        load_audio_folder(root, on_bad_file="error")
    with pytest.raises(DataError, match="at least 2 class"):
        load_audio_folder(root / "yes")
    with pytest.raises(DataError, match="no such folder"):
        load_audio_folder(tmp_path / "nope")


def test_keywords_generator_rejects_bad_options(tmp_path):
    with pytest.raises(InputError, match="--words"):
        make_keywords(tmp_path, ["yes"], ["en-us"], [175], [50])
    with pytest.raises(InputError, match="--speeds"):
        make_keywords(tmp_path, ["yes", "no"], ["en-us"], [5], [50])
    with pytest.raises(DataError, match="voice 'xx-nope'"):
        make_keywords(tmp_path, ["yes", "no"], ["xx-nope"], [175], [50])
