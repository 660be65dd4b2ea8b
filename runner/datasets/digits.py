"""scikit-learn's bundled digits: 1797 real 8x8 handwritten digits that need no download.

They make the quickstart and the learning tests run on real data on any machine. No official
split ships with them, so a fixed test set of 360 images is carved with a constant seed (the
same for every job, like an official test set); the validation split is then carved from the
rest by the job's split seed, like every other dataset.
"""

from __future__ import annotations

from pathlib import Path

import torch

from runner.datasets.official import OfficialSplits
from runner.errors import DatasetError

_TEST_SIZE = 360
_TEST_SEED = 1797  # fixed: the "official" test set must not move with the job's seeds


def expected_files(name: str, root: Path) -> list[Path]:
    return []  # bundled with scikit-learn: nothing in the data root


def ensure_available(name: str, root: Path, download: bool, verify_checksums: bool = True) -> None:
    try:
        import sklearn.datasets  # noqa: F401
    except ImportError as exc:  # pragma: no cover - scikit-learn is a dependency
        raise DatasetError(
            f"dataset 'digits' ships with scikit-learn, which cannot be imported ({exc}); "
            "reinstall the project: pip install -e ."
        ) from None


def read_official(name: str, root: Path, verify_checksums: bool = True) -> OfficialSplits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel values are 0..16; rescale to the 0..255 uint8 range every other dataset uses.
    images = torch.from_numpy(bunch.images).mul(255.0 / 16.0).round().to(torch.uint8)
    images = images.unsqueeze(1)  # (1797, 1, 8, 8)
    labels = torch.from_numpy(bunch.target).to(torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(_TEST_SEED))
    test_idx, train_idx = order[:_TEST_SIZE].sort().values, order[_TEST_SIZE:].sort().values
    return OfficialSplits(
        train_images=images[train_idx],
        train_labels=labels[train_idx],
        test_images=images[test_idx],
        test_labels=labels[test_idx],
    )
