"""The common shape every dataset reader returns: the official train and test sets.

A reader module (one per on-disk format family, named by `DatasetInfo.module`) defines:

- `expected_files(name, root) -> list[Path]`: the official files it reads, in order;
- `ensure_available(name, root, download, verify_checksums=True)`: make sure they are
  present and whole (downloading where allowed), else raise a `DatasetError` naming every
  expected file and where it goes;
- `read_official(name, root, verify_checksums=True) -> OfficialSplits`.

`verify_checksums=False` skips the comparison with published checksums (files a test
fabricates cannot match them); structure, sizes and label ranges are checked regardless.
"""

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
