"""Datasets for training and evaluation: ``digits`` (embedded), ``cifar10``, ``fashion-mnist``, ``folder:PATH``.

    src = open_dataset("digits")                 # ImageSource: lazy PIL images, targets, class names
    train_idx, val_idx = split_indices(len(src), 0.2, seed=0)
    train_ds = TransformedSubset(src, train_idx, transform_for(spec, train=True))
"""

from torchkeep.data._datasets import (
    DATASET_NAMES,
    ImageSource,
    TransformedSubset,
    digits_images,
    open_dataset,
    split_indices,
)

__all__ = ["DATASET_NAMES", "ImageSource", "TransformedSubset", "digits_images", "open_dataset", "split_indices"]
