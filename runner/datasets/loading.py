"""Turning a dataset into the normalised train / validation / test tensors a cell uses.

The splits come from the prepared-array cache (runner/datasets/prepared.py: decoded once per
data root, dataset version and split seed), are normalised with the training split's
statistics, and are kept in this process's memory: a Ray worker is reused across cells, so
the second cell on a dataset pays nothing. Images are never read one by one through a
DataLoader: at batch 1 that costs more than the training.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from runner.datasets.official import OfficialSplits
from runner.datasets.prepared import (
    PreparedSplits,
    carve_validation,
    checksums_waived,
    info_for,
    prepare,
    reader,
    split_official,
)
from runner.datasets.registry import DatasetInfo

__all__ = ["Splits", "carve_validation", "ensure_available", "load_splits", "prepare_splits"]


@dataclass(frozen=True)
class Splits:
    """Normalised float32 inputs and int64 labels: images (N, C, H, W) for convolutional
    networks, or flattened to (N, C*H*W) for MLPs (a view of the same memory)."""

    info: DatasetInfo
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: float  # normalisation statistics, from the training split only
    std: float
    split_fingerprint: str  # identifies the validation split, recorded with results

    def describe(self) -> dict[str, Any]:
        return {
            "train_size": len(self.y_train),
            "val_size": len(self.y_val),
            "test_size": len(self.y_test),
            "input_features": int(self.x_train[0].numel()),
            "classes": self.info.classes,
            "norm_mean": self.mean,
            "norm_std": self.std,
            "split_fingerprint": self.split_fingerprint,
        }

    def limited(self, limit: int, seed: int) -> Splits:
        """A seeded random `limit` of the training examples (all when there are fewer), in
        their file order: the same subset for every method and seed of a sweep (`seed` is
        the split seed), and not the file's first N, which for a file ordered by class
        would be one class."""
        n = len(self.y_train)
        if limit >= n:
            return self
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        picked = order[:limit].sort().values
        return replace(
            self,
            x_train=self.x_train.index_select(0, picked),
            y_train=self.y_train.index_select(0, picked),
        )

    def flattened(self) -> Splits:
        def flat(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(len(x), -1)

        return replace(
            self, x_train=flat(self.x_train), x_val=flat(self.x_val), x_test=flat(self.x_test)
        )


def ensure_available(name: str, root: Path, download: bool, verify_checksums: bool = True) -> None:
    """Make sure the dataset's official files are present and whole (downloading where
    allowed), or raise a DatasetError that names them and where they go."""
    info = info_for(name)
    verify_checksums = verify_checksums and not checksums_waived(info, root)
    reader(info).ensure_available(name, root, download, verify_checksums)


def _normalised(prepared: PreparedSplits) -> Splits:
    mean, std = prepared.norm_mean, prepared.norm_std
    arrays = prepared.arrays

    def normalise(key: str) -> torch.Tensor:
        images = torch.from_numpy(arrays[key])  # uint8 (N, C, H, W), possibly memory-mapped
        return images.to(torch.float32).div_(255.0).sub_(mean).div_(std).contiguous()

    def labels(key: str) -> torch.Tensor:
        return torch.from_numpy(arrays[key]).clone()  # into memory, off the mapping

    return Splits(
        info=prepared.info,
        x_train=normalise("train_images"),
        y_train=labels("train_labels"),
        x_val=normalise("val_images"),
        y_val=labels("val_labels"),
        x_test=normalise("test_images"),
        y_test=labels("test_labels"),
        mean=mean,
        std=std,
        split_fingerprint=prepared.split_fingerprint,
    )


def prepare_splits(
    official: OfficialSplits, info: DatasetInfo, split_seed: int, flatten: bool = True
) -> Splits:
    """Split and normalise official sets in memory, bypassing the on-disk cache."""
    splits = _normalised(split_official(official, info, split_seed))
    return splits.flattened() if flatten else splits


# One dataset at a time per worker process: enough for a sweep that moves through datasets,
# and bounded in memory (a NORB split in float32 is close to a gigabyte). Flattened and
# image-shaped inputs share this one copy.
_CACHE: dict[tuple[str, str, int], Splits] = {}


def load_splits(
    name: str,
    root: Path,
    split_seed: int,
    download: bool = True,
    flatten: bool = True,
    verify_checksums: bool = True,
) -> Splits:
    """The dataset's splits, from this process's cache when it already holds them."""
    cache_key = (name, str(root), split_seed)
    splits = _CACHE.get(cache_key)
    if splits is None:
        _CACHE.clear()  # before loading the next one: at most one dataset in memory
        splits = _normalised(prepare(name, root, split_seed, download, verify_checksums))
        _CACHE[cache_key] = splits
    return splits.flattened() if flatten else splits
