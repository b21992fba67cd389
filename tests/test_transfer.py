"""EfficientNet-Lite0 transfer parts (frozen prefix + trainable suffix) and distillation targets.

Real weights from the installed package, tiny inputs, image_size 64 to stay fast on busy CPUs.
"""

from __future__ import annotations

import socket

import pytest
import torch

from modelloop.compress.distill import soft_targets
from modelloop.errors import DataError, InputError, SpecError
from modelloop.models.transfer import (
    ImageNetInput,
    build_suffix,
    extract,
    load_backbone,
    pretrained_weights_path,
    resolve_config,
    transfer_parts,
)

SIZE = 64  # multiple of 32; every stride-2 stage halves it: 64 -> 32 -> ... -> 2


def cfg(**kw):
    return {"num_classes": 3, "image_size": SIZE, **kw}


@pytest.fixture(scope="module")
def frozen_parts():
    torch.manual_seed(0)
    return transfer_parts(cfg(mode="frozen"))


@pytest.fixture(scope="module")
def finetune_parts():
    torch.manual_seed(0)
    return transfer_parts(cfg(mode="finetune", finetune_blocks=2))


def test_weights_load_offline_and_equal_the_package_file(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    path = pretrained_weights_path()
    net = load_backbone(image_size=SIZE)
    prefix, suffix = transfer_parts(cfg(mode="finetune", finetune_blocks=2))

    file_state = torch.load(path, weights_only=True, map_location="cpu")
    net_state = net.state_dict()
    assert set(file_state) == set(net_state)
    for k, v in file_state.items():
        assert torch.equal(net_state[k], v), k
    # The parts hold the same tensors: the stem in the prefix, the last block in the suffix.
    assert torch.equal(prefix[1].conv.weight, file_state["_conv_stem.weight"])
    assert torch.equal(suffix.blocks.blocks[-1]._project_conv.weight, file_state["_blocks.15._project_conv.weight"])
    assert torch.equal(suffix.head.conv.weight, file_state["_conv_head.weight"])


def test_a_user_weights_file_is_used_and_a_missing_one_is_a_data_error(tmp_path) -> None:
    state = torch.load(pretrained_weights_path(), weights_only=True, map_location="cpu")
    state["_conv_stem.weight"] = torch.zeros_like(state["_conv_stem.weight"])
    own = tmp_path / "mine.pth"
    torch.save(state, own)
    prefix, _ = transfer_parts(cfg(weights=str(own)))
    assert torch.count_nonzero(prefix[1].conv.weight) == 0

    with pytest.raises(DataError, match="nowhere.pth"):
        transfer_parts(cfg(weights=str(tmp_path / "nowhere.pth")))
    torch.save({"not": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(DataError, match="other.pth.*cannot be loaded"):
        transfer_parts(cfg(weights=str(tmp_path / "other.pth")))


@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (3, 3, 40, 50), (1, 1, 8, 8), (2, 3, 100, 64)])
def test_gray_and_colour_inputs_of_any_size_give_the_prefix_shapes(shape, frozen_parts, finetune_parts) -> None:
    x = torch.rand(shape) * 255
    norm = ImageNetInput(SIZE)(x)
    assert norm.shape == (shape[0], 3, SIZE, SIZE)

    feats = extract(frozen_parts[0], x, batch_size=2)
    assert feats.shape == (shape[0], 1280) and feats.dtype == torch.float32
    maps = extract(finetune_parts[0], x, batch_size=2)
    assert maps.shape == (shape[0], 192, SIZE // 32, SIZE // 32)
    assert maps.is_contiguous() and not maps.is_inference()


def test_gray_equals_the_same_image_replicated_to_three_channels() -> None:
    gray = torch.rand(2, 1, 28, 28) * 255
    inp = ImageNetInput(SIZE)
    assert torch.allclose(inp(gray), inp(gray.expand(-1, 3, -1, -1)), atol=1e-5)


def test_tiny_or_malformed_images_are_input_errors(frozen_parts) -> None:
    with pytest.raises(InputError, match=r"received shape \(1, 1, 1, 1\).*at least 8 pixels"):
        extract(frozen_parts[0], torch.zeros(1, 1, 1, 1))
    with pytest.raises(InputError, match=r"received shape \(1, 2, 28, 28\).*C = 1 or 3"):
        ImageNetInput(SIZE)(torch.zeros(1, 2, 28, 28))
    with pytest.raises(InputError, match=r"received shape \(28, 28\)"):
        ImageNetInput(SIZE)(torch.zeros(28, 28))


def test_config_errors_name_the_field() -> None:
    with pytest.raises(SpecError, match="'mode': received 'partial'"):
        resolve_config(cfg(mode="partial"))
    with pytest.raises(SpecError, match="'finetune_blocks': received 16"):
        resolve_config(cfg(finetune_blocks=16))
    with pytest.raises(SpecError, match="unknown field"):
        resolve_config(cfg(colour="red"))
    with pytest.raises(SpecError, match="'num_classes': received None"):
        resolve_config({"image_size": SIZE})


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_prefix_frozen_suffix_trainable(mode, frozen_parts, finetune_parts) -> None:
    prefix, suffix = frozen_parts if mode == "frozen" else finetune_parts
    assert not any(p.requires_grad for p in prefix.parameters())
    assert all(p.requires_grad for p in suffix.parameters())
    prefix.train()  # a caller's train() cannot unfreeze the prefix's BatchNorm or drop connect
    assert not any(m.training for m in prefix.modules())

    x = extract(prefix, torch.rand(4, 1, 28, 28) * 255)
    suffix.train()
    loss = torch.nn.functional.cross_entropy(suffix(x), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert all(p.grad is not None for p in suffix.parameters())
    suffix.zero_grad(set_to_none=True)


def test_finetune_suffix_keeps_imagenet_batchnorm_statistics_in_train_mode(finetune_parts) -> None:
    prefix, suffix = finetune_parts
    x = extract(prefix, torch.rand(4, 1, 28, 28) * 255)
    before = {k: v.clone() for k, v in suffix.state_dict().items() if "running" in k}
    suffix.train()
    assert suffix.classifier.training and not suffix.head.bn.training
    with torch.no_grad():
        suffix(x)
    after = suffix.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())

    _, trainable_bn = transfer_parts(cfg(mode="finetune", bn="train"))
    trainable_bn.train()
    assert trainable_bn.head.bn.training


@pytest.mark.parametrize("mode,head", [("frozen", "linear"), ("frozen", "mlp"), ("finetune", "linear")])
def test_suffix_state_dict_round_trip_gives_identical_logits(mode, head) -> None:
    torch.manual_seed(1)
    config = cfg(mode=mode, head=head)
    prefix, suffix = transfer_parts(config)
    x = extract(prefix, torch.rand(3, 1, 28, 28) * 255)
    rebuilt = build_suffix(config)
    assert set(rebuilt.state_dict()) == set(suffix.state_dict())
    rebuilt.load_state_dict(suffix.state_dict())
    suffix.eval()
    rebuilt.eval()
    with torch.inference_mode():
        assert torch.equal(suffix(x), rebuilt(x))


def test_soft_targets_rows_sum_to_one_and_alpha_extremes() -> None:
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(6, 4) * 3, dim=1)
    labels = torch.tensor([0, 1, 2, 3, -1, 2])  # -1: an unlabeled input, the teacher alone

    mixed = soft_targets(probs, labels, temperature=2.0, alpha=0.5)
    assert mixed.shape == (6, 4) and mixed.dtype == torch.float32
    assert torch.allclose(mixed.sum(1), torch.ones(6)) and bool((mixed >= 0).all())

    at_t = torch.softmax(torch.log(probs) / 2.0, dim=1)
    assert torch.allclose(soft_targets(probs, labels, alpha=1.0)[:4], torch.eye(4))
    assert torch.allclose(soft_targets(probs, labels, alpha=1.0)[4], at_t[4])
    assert torch.allclose(soft_targets(probs, labels, temperature=2.0, alpha=0.0), at_t, atol=1e-6)
    assert torch.allclose(soft_targets(probs, None, temperature=1.0), probs, atol=1e-6)
    # Softening flattens: the top probability never grows with temperature.
    assert bool((soft_targets(probs, temperature=4.0).max(1).values <= probs.max(1).values + 1e-6).all())


def test_soft_targets_reject_bad_input() -> None:
    probs = torch.full((2, 3), 1 / 3)
    with pytest.raises(InputError, match="teacher_probs: received rows summing"):
        soft_targets(torch.randn(2, 3))
    with pytest.raises(InputError, match=r"labels: received \(3,\)"):
        soft_targets(probs, torch.tensor([0, 1, 2]))
    with pytest.raises(InputError, match="labels: received values 0..3"):
        soft_targets(probs, torch.tensor([0, 3]))
    with pytest.raises(InputError, match="temperature: received 0"):
        soft_targets(probs, temperature=0)
    with pytest.raises(InputError, match="alpha: received 1.5"):
        soft_targets(probs, alpha=1.5)
