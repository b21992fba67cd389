"""TextEncoder's ONNX Runtime path and its measured thread choice, on the real MiniLM.

The ONNX export is written into a temporary cache folder for this module (MODELLOOP_CACHE_DIR),
so the "exported once, then reused" checks start from nothing.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from modelloop.errors import InputError
from modelloop.hardware import ChoiceCache, available_cores, choose_threads
from modelloop.models import text_onnx
from modelloop.models.text_encoder import TextEncoder, _onnx_folder

pytest.importorskip("onnxruntime")

TEXTS = [
    "A gripping, beautifully shot thriller.",
    "Dull.",
    "",
    "The plot meanders for two hours and the ending makes no sense at all, but the lead actor is wonderful.",
    "I laughed, I cried, I bought the soundtrack on the way home.",
    "Wow",
    "a very long review that goes on and on " * 60,  # past max_length: truncated alike on both paths
] * 3


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("modelloop-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELLOOP_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def onnx_encoder(cache) -> TextEncoder:
    return TextEncoder(backend="onnx", batch_size=4).load()


@pytest.fixture(scope="module")
def torch_encoder() -> TextEncoder:
    return TextEncoder(backend="torch", batch_size=4).load()


def test_onnx_matches_torch(onnx_encoder: TextEncoder, torch_encoder: TextEncoder) -> None:
    assert onnx_encoder.backend_ == "onnx" and onnx_encoder.precision_ == "fp32"
    assert torch_encoder.backend_ == "torch"
    got, ref = onnx_encoder.encode(TEXTS), torch_encoder.encode(TEXTS)
    assert got.shape == ref.shape == (len(TEXTS), 384) and got.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(got, ref).min() >= 0.9999
    # Alone (batch of one, no padding) and in a length-bucketed batch: the same vector.
    for i in (0, 2, 6):
        assert torch.nn.functional.cosine_similarity(onnx_encoder.encode([TEXTS[i]]), got[i:i + 1]).item() >= 0.9999


def test_auto_picks_onnx_and_the_export_is_reused(cache, onnx_encoder: TextEncoder) -> None:
    folder = _onnx_folder("all-MiniLM-L6-v2")
    assert folder.parent.parent == cache  # <cache dir>/onnx/<hash>
    model_file = folder / text_onnx.MODEL_FILE
    before = model_file.stat()
    again = TextEncoder().load()  # backend "auto"
    assert again.backend_ == "onnx" and again.exported_ is False and again.model_ is None
    after = model_file.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # no second export, no leftovers


def test_int8_rejected_below_threshold_falls_back_to_fp32(cache, onnx_encoder: TextEncoder) -> None:
    strict = TextEncoder(precision="int8", int8_min_cosine=1.01).load()
    check = strict.int8_check_
    assert check is not None and check["accepted"] is False and check["threshold"] == 1.01
    assert 0 < check["min_cosine"] < 1.01 and check["texts"] >= 20
    assert strict.precision_ == "fp32" and strict.backend_ == "onnx"
    assert not strict.cache_id.endswith("#int8")
    assert torch.allclose(strict.encode(TEXTS[:7]), onnx_encoder.encode(TEXTS[:7]), atol=1e-6)


def test_int8_accepted_when_it_meets_the_threshold(cache, onnx_encoder: TextEncoder) -> None:
    strict = TextEncoder(precision="int8", int8_min_cosine=1.01).load()
    measured = strict.int8_check_["min_cosine"]
    lenient = TextEncoder(precision="int8", int8_min_cosine=round(measured - 0.01, 4)).load()
    assert lenient.int8_check_["accepted"] is True and lenient.int8_check_["min_cosine"] == measured
    assert lenient.precision_ == "int8" and lenient.cache_id.endswith("#int8")
    got, ref = lenient.encode(TEXTS[:7]), onnx_encoder.encode(TEXTS[:7])
    cos = torch.nn.functional.cosine_similarity(got, ref)
    assert not torch.allclose(got, ref, atol=1e-6)  # it really runs the quantized model
    assert cos.min() > 0.9 and torch.allclose(got.norm(dim=1), torch.ones(7), atol=1e-4)


def test_thread_probe_measures_then_caches() -> None:
    calls: list[int] = []
    cache = ChoiceCache(ttl_s=600)
    options = [1, max(2, available_cores())]
    first = choose_threads("test|matmul", lambda t: calls.append(t) or torch.ones(64, 64) @ torch.ones(64, 64),
                           options, cache=cache)
    assert first.source == "probe" and first.threads in options and set(calls) == set(options)
    assert set(first.timings) == {f"{t}t" for t in options}
    n = len(calls)
    second = choose_threads("test|matmul", lambda t: calls.append(t), options, cache=cache)
    assert (second.source, second.threads, len(calls)) == ("cache", first.threads, n)
    stale = ChoiceCache(ttl_s=0.0)  # every decision is stale at once: measured again
    stale.put("test|matmul", {"threads": 1, "timings": {}})
    assert choose_threads("test|matmul", lambda t: None, options, cache=stale).source == "probe"
    assert choose_threads("test|one", lambda t: None, [3], cache=cache).source == "single"


def test_encoder_thread_choice_is_measured_per_bucket_and_cached(cache, onnx_encoder: TextEncoder) -> None:
    onnx_encoder.encode(TEXTS)
    choice = onnx_encoder.threads_
    cores = max(1, min(torch.get_num_threads(), available_cores()))
    assert choice is not None and choice.threads in {1, cores}
    assert choice.source in ({"probe", "cache"} if cores > 1 else {"single"})
    again = TextEncoder(backend="onnx", batch_size=4).load()
    again.encode(TEXTS)
    assert again.threads_.threads == choice.threads and again.threads_.source in {"cache", "single"}
    if cores > 1:
        assert (cache / "threads.json").is_file()  # kept on disk for the next process
    forced = TextEncoder(backend="onnx", num_threads=1).load()
    forced.encode(TEXTS[:3])
    assert (forced.threads_.threads, forced.threads_.source) == (1, "config")


def test_served_featurizer_runs_on_onnx(cache, onnx_encoder: TextEncoder) -> None:
    from modelloop.tasks.features import MiniLMFeaturizer

    feat = MiniLMFeaturizer.from_config({"kind": "minilm", "encoder": "all-MiniLM-L6-v2", "max_length": 256})
    one = feat.transform(["a gripping thriller"])
    assert feat.encoder.backend_ == "onnx" and one.shape == (1, 384)
    assert torch.allclose(one, onnx_encoder.encode(["a gripping thriller"]), atol=1e-6)


@pytest.mark.parametrize(("texts", "match"), [
    ("one string", r"texts: received str; expected a list of strings"),
    (None, r"texts: received NoneType"),
    (["fine", 3], r"texts\[1\]: received int 3; expected a string"),
    ([b"bytes"], r"texts\[0\]: received bytes"),
])
def test_bad_texts_name_the_field(onnx_encoder: TextEncoder, texts, match: str) -> None:
    with pytest.raises(InputError, match=match):
        onnx_encoder.encode(texts)


def test_empty_list_gives_empty_embeddings(onnx_encoder: TextEncoder) -> None:
    assert onnx_encoder.encode([]).shape == (0, 384)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"backend": "tensorrt"}, r"backend: received 'tensorrt'; expected one of auto, onnx, torch"),
    ({"precision": "int4"}, r"precision: received 'int4'"),
    ({"precision": "int8", "backend": "torch"}, r"int8 runs on ONNX Runtime only"),
    ({"int8_min_cosine": 1.5}, r"int8_min_cosine: received 1.5; expected a number in \(0, 1.01\]"),
    ({"int8_min_cosine": "high"}, r"int8_min_cosine: received 'high'"),
    ({"num_threads": 0}, r"num_threads: received 0"),
    ({"num_threads": True}, r"num_threads: received True"),
])
def test_bad_options_name_the_field(kwargs, match: str) -> None:
    with pytest.raises(InputError, match=match):
        TextEncoder(**kwargs)


def test_onnx_backend_refuses_bf16() -> None:
    with pytest.raises(InputError, match="backend: received 'onnx'"):
        TextEncoder(backend="onnx", precision="bf16", device="cpu").load()



def test_an_export_that_failed_is_not_retried_on_every_load(tmp_path):
    """A failed export leaves a marker naming the error and the torch version: later loads fall
    back at once instead of paying for the export again; a damaged export folder is replaced."""
    import json

    import torch

    from modelloop.models import text_onnx

    folder = tmp_path / "abc123"
    (tmp_path / "abc123.failed.json").write_text(json.dumps({"torch": torch.__version__, "error": "E: boom"}))
    calls = []
    with pytest.raises(RuntimeError, match="failed before.*E: boom"):
        text_onnx.ensure_export(folder, lambda: calls.append(1), {"model": "x"})
    assert calls == []  # the model was not even loaded
    leftover = tmp_path / ".abc123.deadbeef.tmp"
    leftover.mkdir()
    old = time.time() - 7200
    os.utime(leftover, (old, old))
    (tmp_path / "abc123.failed.json").write_text(json.dumps({"torch": "0.0", "error": "E: old torch"}))
    with pytest.raises(Exception, match="NoneType"):  # a changed torch tries again; None cannot export
        text_onnx.ensure_export(folder, lambda: None, {"model": "x"})
    assert not leftover.exists()  # a killed process's temporary export, an hour old, is swept
    marker = json.loads((tmp_path / "abc123.failed.json").read_text())
    assert marker["torch"] == torch.__version__ and marker["error"]  # the new failure, for the next load
    assert not folder.exists()
