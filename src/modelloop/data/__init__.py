"""Data preprocessing: load sources, validate and clean, split, normalize, augment."""

from .dataset import DataReport, Dataset, prepare_dataset
from .image import ImageFormat, decode_image
from .transforms import Normalizer, random_shift

__all__ = [
    "Dataset",
    "DataReport",
    "prepare_dataset",
    "ImageFormat",
    "decode_image",
    "Normalizer",
    "random_shift",
]
