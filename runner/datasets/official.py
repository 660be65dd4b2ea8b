"""The common shape every dataset reader returns: the official train and test sets."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class OfficialSplits:
    """Images as uint8 (N, C, H, W) in natural orientation; labels as int64 from 0."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
