"""Datasets as uint8 tensors, batched on-device augmentation, protected-dataset I/O."""
from .augment import random_crop_flip, to_float
from .datasets import DATASETS, ImageTensors, balanced_subset, load_dataset, load_imagefolder, resolve_data_root

__all__ = ["DATASETS", "ImageTensors", "balanced_subset", "load_dataset", "load_imagefolder",
           "resolve_data_root", "random_crop_flip", "to_float"]
