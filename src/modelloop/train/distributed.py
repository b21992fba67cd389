"""Data-parallel helpers for :class:`~modelloop.train.Trainer`: which process of how many this
is, and BatchNorm statistics over the whole batch when the processes each hold a share of it.

PyTorch's ``SyncBatchNorm`` runs only on CUDA. On CPU, :func:`batch_stats_over_processes` makes
every BatchNorm layer compute its batch mean and variance over all processes' shares (one
differentiable all-reduce per layer and step), so a data-parallel fit normalizes exactly as a
one-process fit of the whole batch does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["world", "batch_stats_over_processes"]


def world() -> tuple[int, int]:
    """(rank, world size) of the data-parallel group this process is in; (0, 1) when none."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _forward(self: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm over every process's share of the batch (training), as the layer's own (eval)."""
    if not self.training and self.running_mean is not None:  # evaluation: the running statistics
        return type(self).forward(self, x)
    from torch.distributed.nn.functional import all_reduce

    dims = [0, *range(2, x.dim())]
    c = x.shape[1]
    count = torch.tensor([x.numel() / c], dtype=x.dtype, device=x.device)
    # sums, sums of squares and counts of every process, summed; gradients flow back to each share
    stats = all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
    n = stats[-1]
    mean = stats[:c] / n
    var = (stats[c:2 * c] / n - mean * mean).clamp_min(0.0)
    if self.track_running_stats and self.running_mean is not None:
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp_min(1.0), alpha=m)
    shape = [1, c] + [1] * (x.dim() - 2)
    y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
    if self.affine:
        y = y * self.weight.view(shape) + self.bias.view(shape)
    return y


@contextlib.contextmanager
def batch_stats_over_processes(model: nn.Module) -> Iterator[None]:
    """While inside, the model's BatchNorm layers (CPU, more than one process) normalize training
    batches with statistics over every process's share; the layers are unchanged afterwards and
    their parameters and buffers keep their names throughout."""
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm) and not isinstance(m, nn.SyncBatchNorm)]
    for m in layers:
        m.forward = _forward.__get__(m)  # this instance only
    try:
        yield
    finally:
        for m in layers:
            del m.forward
