"""Turning a dataset's official files into the train / validation / test tensors a cell uses.

Loaded once per worker process and kept in memory as compact, ready-to-slice tensors (a Ray
worker is reused across cells, so the second cell on a dataset pays nothing). Images are
never read one by one through a DataLoader: at batch 1 that costs more than the training.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from runner.datasets.official import OfficialSplits
from runner.datasets.registry import DATASETS, DatasetInfo
from runner.errors import DatasetError


@dataclass(frozen=True)
class Splits:
    """Normalised float32 inputs (flattened to (N, features) for MLPs) and int64 labels."""

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


def _module(info: DatasetInfo) -> Any:
    return importlib.import_module(info.module)


def ensure_available(name: str, root: Path, download: bool) -> None:
    """Make sure the dataset's files are present (downloading where allowed), or raise."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    _module(DATASETS[name]).ensure_available(name, root, download)


def carve_validation(
    n: int, info: DatasetInfo, split_seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random split of the official training set into (train, val) indices.

    The validation share is the paper's (e.g. 5000 of 60000 for MNIST), so a smaller
    fabricated or truncated file is split in the same proportion.
    """
    n_val = round(n * info.val / (info.train + info.val))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    return order[n_val:].sort().values, order[:n_val].sort().values


def prepare_splits(
    official: OfficialSplits, info: DatasetInfo, split_seed: int, flatten: bool = True
) -> Splits:
    train_idx, val_idx = carve_validation(len(official.train_labels), info, split_seed)
    raw_train = official.train_images[train_idx]
    # Statistics in float64 over the training split only: no peeking at val or test.
    scaled = raw_train.to(torch.float64) / 255.0
    mean = float(scaled.mean())
    std = float(scaled.std()) or 1.0

    def normalise(images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32).div_(255.0).sub_(mean).div_(std)
        return x.reshape(len(x), -1).contiguous() if flatten else x.contiguous()

    fingerprint = hashlib.sha256(val_idx.numpy().tobytes()).hexdigest()[:12]
    return Splits(
        info=info,
        x_train=normalise(raw_train),
        y_train=official.train_labels[train_idx].contiguous(),
        x_val=normalise(official.train_images[val_idx]),
        y_val=official.train_labels[val_idx].contiguous(),
        x_test=normalise(official.test_images),
        y_test=official.test_labels.contiguous(),
        mean=mean,
        std=std,
        split_fingerprint=fingerprint,
    )


# One dataset at a time per worker process: enough for a sweep that moves through datasets,
# and bounded in memory (a NORB split in float32 is close to a gigabyte).
_CACHE: dict[tuple[str, str, int, bool], Splits] = {}


def load_splits(
    name: str, root: Path, split_seed: int, download: bool = True, flatten: bool = True
) -> Splits:
    """The dataset's splits, from this process's cache when it already holds them."""
    cache_key = (name, str(root), split_seed, flatten)
    if cache_key in _CACHE:
        return _CACHE[cache_key]
    ensure_available(name, root, download)
    info = DATASETS[name]
    official = _module(info).read_official(name, root)
    splits = prepare_splits(official, info, split_seed, flatten)
    _CACHE.clear()
    _CACHE[cache_key] = splits
    return splits
