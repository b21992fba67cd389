"""The serving backends of image models: an ONNX export answers with the embedding the OOD score
needs from the same pass, equal to the PyTorch reference's; an export without it still serves."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from modelloop.compress.backends import EMBEDDING_OUTPUT, OrtRunner, ServingModule, export_onnx
from modelloop.data.builtin import seed_case_traffic
from modelloop.feedback.drift import embed
from modelloop.models import build_model


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    net = build_model({"family": "cnn", "input_shape": [1, 28, 28], "num_classes": 2, "params": {}}).eval()
    x, _ = seed_case_traffic()
    return net, x[:40].astype(np.float32)


def test_onnx_export_carries_the_reference_embedding(cnn, tmp_path):
    net, x = cnn
    module = ServingModule(net, [33.0], [78.0])
    export_onnx(module, torch.from_numpy(x[:2]), tmp_path / "model.onnx")
    outputs = [o.name for o in onnx.load(str(tmp_path / "model.onnx")).graph.output]
    assert outputs == ["probs", EMBEDDING_OUTPUT]
    runner = OrtRunner(tmp_path / "model.onnx")
    probs, emb = runner.with_embedding(x)
    assert np.abs(runner(x) - probs).max() == 0
    with torch.inference_mode():
        ref_probs = module(torch.from_numpy(x)).numpy()
    ref_emb = embed(net, (torch.from_numpy(x) - 33.0) / 78.0)
    assert emb.shape == ref_emb.shape and emb.shape[0] == len(x)
    assert np.abs(probs - ref_probs).max() < 1e-5
    assert np.abs(emb - ref_emb).max() < 1e-4


def test_an_export_without_the_embedding_still_serves(cnn, tmp_path):
    net, x = cnn
    export_onnx(ServingModule(net, [33.0], [78.0]), torch.from_numpy(x[:2]), tmp_path / "model.onnx")
    model = onnx.load(str(tmp_path / "model.onnx"))  # as exported before the embedding was an output
    keep = [o for o in model.graph.output if o.name != EMBEDDING_OUTPUT]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    onnx.save(model, str(tmp_path / "old.onnx"))
    old = OrtRunner(tmp_path / "old.onnx")
    assert old.with_embedding is None
    assert np.abs(old(x) - OrtRunner(tmp_path / "model.onnx")(x)).max() == 0


def test_int8_answers_without_its_quantized_embedding(cnn, tmp_path):
    """The OOD threshold was calibrated on fp32 embeddings: an int8 model's score comes from the
    PyTorch reference, not from its own quantized layer."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from modelloop.compress.backends import ONNX_FILE, ONNX_INT8_FILE, make_runner

    net, x = cnn
    module = ServingModule(net, [33.0], [78.0])
    export_onnx(module, torch.from_numpy(x[:2]), tmp_path / ONNX_FILE)
    quantize_dynamic(str(tmp_path / ONNX_FILE), str(tmp_path / ONNX_INT8_FILE), weight_type=QuantType.QInt8)
    int8 = make_runner("onnxruntime-int8", module, tmp_path)
    assert int8.with_embedding is None and int8(x).shape == (len(x), 2)
    assert make_runner("onnxruntime", module, tmp_path).with_embedding is not None
