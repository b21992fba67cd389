"""Audio classification (keyword spotting): folders of short clips per class -> class labels.

Inputs are 1 s, 16 kHz mono waveforms (``data.audio``: decoded, resampled, silence trimmed with
the Silero VAD, centred). Candidates: log-mel spectrograms (40 bands, 20 ms frames, standardized
per band on the training split) into the small CNN, or into a depthwise-separable CNN (DS-CNN,
cheaper per prediction). The training split carries augmented copies of each clip (see
``data.audio.augment_waveforms``), made when the dataset is prepared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..data.audio import (
    CLIP_SAMPLES,
    SAMPLE_RATE,
    audio_info,
    fix_length,
    parse_samples,
    prepare_audio_dataset,
    read_audio,
)
from ..errors import DataError, InputError
from ..spec import DataSpec, ServingSpec
from .base import Candidate, fields_of, file_inputs
from .image_classification import MAX_ITEMS, _check_items
from .supervised import SupervisedTask

__all__ = ["AudioClassification"]

_LOGMEL = {"kind": "logmel", "n_mels": 40}


class AudioClassification(SupervisedTask):
    unit = "clips"
    name = "audio-classification"
    input_kind = "audio"
    json_example = '{"samples": [...], "sample_rate": 16000}'
    uploads = "audio clips (WAV/FLAC/OGG)"
    heavy_json = True  # samples are resampled and trimmed
    binary_types = ("audio/wav", "audio/x-wav", "audio/wave", "audio/flac", "audio/ogg")
    candidates = {
        "cnn": Candidate("cnn", "cnn", dict(_LOGMEL), about="small CNN on log-mel spectrograms"),
        "ds-cnn": Candidate("ds-cnn", "ds-cnn", dict(_LOGMEL),
                            about="depthwise-separable CNN on log-mel spectrograms"),
    }
    default_candidates = ("cnn", "ds-cnn")

    def prepare(self, data: DataSpec, base_dir: Path):
        return prepare_audio_dataset(data, base_dir)

    def candidates_for(self, ds) -> tuple[list[str], dict[str, str]]:
        return list(self.default_candidates), {}

    def collate(self, items: list[Any], like) -> tuple[Any, list[bool]]:
        """Stored waveforms ((1, T) or (T,), 16 kHz, any numeric dtype) -> float32 (n, 1, CLIP_SAMPLES)."""
        import torch

        keep = [isinstance(a, np.ndarray) and a.size > 0 and (a.ndim == 1 or (a.ndim == 2 and a.shape[0] == 1))
                for a in items]
        arrays = [fix_length(a.reshape(-1).astype(np.float32)) for a, k in zip(items, keep, strict=True) if k]
        x = np.stack(arrays)[:, None] if arrays else np.zeros((0, 1, CLIP_SAMPLES), np.float32)
        return torch.from_numpy(x), keep

    def decode_uploads(self, files: list[tuple[str, bytes]], model, limits: ServingSpec) -> np.ndarray:
        """Clips -> (n, 1, T) float32: decoded, resampled to 16 kHz, trimmed; every header is checked
        (duration, sample rate) before any clip is decoded."""
        bounds = (limits.max_audio_seconds, limits.max_audio_sample_rate)
        for name, data in files:
            audio_info(data, name, *bounds)
        return np.stack([read_audio(data, name, *bounds) for name, data in files])

    def parse_binary(self, content_type: str, body: bytes, model, limits: ServingSpec) -> tuple[Any, bool]:
        """One clip's file (WAV/FLAC/OGG) as the whole request body."""
        return self.decode_uploads([("request body", body)], model, limits), False

    def parse_json(self, body: Any, model, limits: ServingSpec | None = None) -> tuple[Any, bool]:
        from ..data.image import json_type

        lim = limits or ServingSpec()
        bounds = {"max_seconds": lim.max_audio_seconds, "max_sample_rate": lim.max_audio_sample_rate}
        if isinstance(body, dict) and "instances" in body:
            items = body["instances"]
            _check_items(items, "clips ({\"samples\": [...], \"sample_rate\": 16000})")
            out = []
            for i, it in enumerate(items):
                if not isinstance(it, dict) or "samples" not in it:
                    raise InputError(f"field 'instances[{i}]': received {json_type(it)}; expected "
                                     "{\"samples\": [...], \"sample_rate\": 16000}")
                out.append(parse_samples(it["samples"], it.get("sample_rate", SAMPLE_RATE),
                                         f"instances[{i}].samples", **bounds))
            return np.stack(out), True
        if isinstance(body, dict) and "samples" in body:
            return parse_samples(body["samples"], body.get("sample_rate", SAMPLE_RATE), **bounds)[None], False
        got = f"fields {fields_of(body)}" if isinstance(body, dict) else json_type(body)
        raise InputError(f"request body: received {got}; expected {{\"samples\": [...], \"sample_rate\": 16000}} "
                         "(one clip, samples from -1 to 1), {\"instances\": [...]} (a list), or an uploaded "
                         "audio file in multipart field 'file'")

    def request_schema(self, model, limits: ServingSpec | None = None) -> dict[str, Any]:
        lim = limits or ServingSpec()
        clip = {"type": "object", "required": ["samples"], "properties": {
            "samples": {"type": "array", "minItems": 1, "items": {"type": "number", "minimum": -1, "maximum": 1},
                        "description": f"mono samples, at most {lim.max_audio_seconds:g} s"},
            "sample_rate": {"type": "integer", "minimum": 4000, "maximum": lim.max_audio_sample_rate,
                            "default": SAMPLE_RATE}}}
        return {"anyOf": [clip, {"type": "object", "required": ["instances"], "properties": {"instances": {
            "type": "array", "minItems": 1, "maxItems": MAX_ITEMS, "items": clip}}}]}

    def describe_input(self, model) -> dict[str, Any]:
        return {"input": "audio", "sample_rate": SAMPLE_RATE, "clip_samples": CLIP_SAMPLES,
                "formats": ["WAV", "FLAC", "OGG"]}

    # -- projects and the command line -------------------------------------------------------
    data_hint = ("a folder of class subfolders of audio clips (WAV/FLAC/OGG); make one with "
                 "'modelloop data keywords OUT'")

    def check_source(self, source: str, base: Path) -> None:
        path = Path(source) if Path(source).is_absolute() else base / source
        if source.startswith("builtin:") or not path.is_dir():
            why = "no built-in audio dataset" if source.startswith("builtin:") else "no such folder"
            raise DataError(f"data source {source!r}: {why}; expected {self.data_hint}")

    def offline_inputs(self, files: list[Path], texts: list[str], rows: list[str]) -> tuple[list[str], Any, str]:
        return file_inputs(files, "audio clips", "an audio model", "a WAV, FLAC or OGG clip")

    def predict_offline(self, model, inputs: Any) -> list[dict[str, Any]]:
        """WAV/FLAC/OGG file paths or 16 kHz waveforms ((T,) or (N, T))."""
        import torch

        from ..data.audio import preprocess

        if isinstance(inputs, (str, Path)) or (isinstance(inputs, list) and inputs and
                                               isinstance(inputs[0], (str, Path))):
            files = [inputs] if isinstance(inputs, (str, Path)) else inputs
            clips = [read_audio(Path(f)) for f in files]
        else:  # waveforms at 16 kHz: one clip (T,) or a batch (N, T)
            arr = np.asarray(inputs, dtype=np.float32)
            batch = arr[None] if arr.ndim == 1 else arr.reshape(len(arr), -1)
            clips = [preprocess(a, SAMPLE_RATE) for a in batch]
        return self.answers(model, model.predict_proba(torch.from_numpy(np.stack(clips))).numpy())
