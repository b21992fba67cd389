"""Knowledge distillation: a small student learns from a teacher's probabilities.

The teacher is any model that gives class probabilities (N, K) for the student's training inputs,
labeled or not. ``soft_targets`` turns them into training targets: the teacher's distribution softened by a
temperature (so the student also learns which wrong classes look alike), mixed with the one-hot label
where one is known. Train the student on these float targets (N, K) with soft cross-entropy,
``-(targets * log_softmax(logits)).sum(1).mean()``: the loss ``Trainer.fit`` uses when the training ``y``
is a float (N, K) tensor (``modelloop.train.trainer.soft_cross_entropy``); validate on int64 labels as usual.

The student matches the softened targets at temperature 1, so its probabilities come out softer than the
teacher's (its argmax is what is distilled); recalibrate if calibrated confidences matter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError

__all__ = ["soft_targets"]


def soft_targets(
    teacher_probs: torch.Tensor,
    labels: torch.Tensor | None = None,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    """Distillation targets from a teacher's probabilities and, where known, the true labels.

    The teacher is softened as ``softmax(log(p) / T)``, which equals ``softmax(logits / T)`` of the teacher's
    logits, so probabilities are all the teacher has to provide. Rows with a label become
    ``alpha * one_hot(label) + (1 - alpha) * softened``; rows without one (``labels`` None, or a label of -1
    for inputs the teacher labels alone) are the softened teacher.

    Args:
        teacher_probs: (N, K) float, non-negative, rows summing to 1.
        labels: (N,) int64 in [0, K) or -1 for unlabeled rows; None when no input is labeled.
        temperature: > 0; 1 keeps the teacher's distribution, larger flattens it.
        alpha: in [0, 1], the weight of the one-hot label; 1 gives the labels alone, 0 the teacher alone.

    Returns:
        (N, K) float32 targets, every row non-negative and summing to 1.

    Raises:
        InputError: a shape, value range or argument is not as described above.
    """
    p = teacher_probs
    if not torch.is_tensor(p) or p.dim() != 2 or not p.is_floating_point() or p.shape[0] == 0 or p.shape[1] < 2:
        shape = tuple(p.shape) if torch.is_tensor(p) else type(p).__name__
        raise InputError(f"teacher_probs: received {shape}; expected a float tensor (N, K) with N >= 1 and K >= 2")
    p = p.detach().float()
    row_sums = p.sum(1)
    if bool((p < 0).any()) or not torch.allclose(row_sums, torch.ones_like(row_sums), atol=1e-3):
        raise InputError(f"teacher_probs: received rows summing to {row_sums.min().item():.4g}..."
                         f"{row_sums.max().item():.4g} (min value {p.min().item():.4g}); expected probabilities: "
                         "non-negative rows summing to 1 (apply softmax to logits first)")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not temperature > 0:
        raise InputError(f"temperature: received {temperature!r}; expected a number > 0")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha: received {alpha!r}; expected a number in [0, 1]")

    n, k = p.shape
    soft = torch.softmax(p.clamp_min(1e-12).log() / float(temperature), dim=1)  # (N, K)
    if labels is None:
        return soft
    if not torch.is_tensor(labels) or labels.shape != (n,) or labels.is_floating_point():
        shape = tuple(labels.shape) if torch.is_tensor(labels) else type(labels).__name__
        raise InputError(f"labels: received {shape}; expected an integer tensor ({n},) matching teacher_probs")
    labels = labels.long()
    if bool(((labels < -1) | (labels >= k)).any()):
        raise InputError(f"labels: received values {labels.min().item()}..{labels.max().item()}; "
                         f"expected class indices in [0, {k}) or -1 for unlabeled rows")
    known = labels >= 0                                                       # (N,)
    one_hot = F.one_hot(labels.clamp_min(0), k).float()                       # (N, K)
    mixed = alpha * one_hot + (1.0 - alpha) * soft
    return torch.where(known.unsqueeze(1), mixed, soft)

