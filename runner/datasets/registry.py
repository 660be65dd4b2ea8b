"""Which datasets exist, their shapes and the paper's split sizes.

Pure Python (no torch): job validation lists the valid names from here. Each dataset's
reader lives in its own module (`DatasetInfo.module`), imported only where data is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    summary: str
    module: str  # defines `ensure_available(name, root, download)`, `read_official(name, root)`
    classes: int
    image_shape: tuple[int, int, int]  # (channels, height, width)
    train: int  # examples in the training split (official train minus validation)
    val: int  # carved from the official training set by a seeded random split
    test: int  # the official test set
    version: int = 1  # bump when the prepared data would change (split, orientation, ...)

    @property
    def features(self) -> int:
        c, h, w = self.image_shape
        return c * h * w


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        DatasetInfo(
            name="digits",
            summary="scikit-learn's bundled 8x8 handwritten digits (1797 images): "
            "real data that needs no download",
            module="runner.datasets.digits",
            classes=10,
            image_shape=(1, 8, 8),
            # No official split ships with it: 360 test images (20%) are carved first, then
            # 180 validation images, each by the seeded split.
            train=1257,
            val=180,
            test=360,
        ),
        DatasetInfo(
            name="mnist",
            summary="MNIST handwritten digits (paper Table 2 split)",
            module="runner.datasets.idx",
            classes=10,
            image_shape=(1, 28, 28),
            train=55000,
            val=5000,
            test=10000,
        ),
    ]
}
