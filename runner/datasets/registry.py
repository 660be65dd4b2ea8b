"""Which datasets exist, their shapes and the paper's split sizes (Table 2).

Pure Python (no torch): job validation lists the valid names from here. Each dataset's
reader lives in its own module (`DatasetInfo.module`), imported only where data is loaded;
one module per on-disk format family (IDX, CIFAR pickles, small NORB binary matrices).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    summary: str
    # Defines `expected_files(name, root)`, `ensure_available(name, root, download,
    # verify_checksums)` and `read_official(name, root, verify_checksums)`.
    module: str
    classes: int
    image_shape: tuple[int, int, int]  # (channels, height, width)
    train: int  # examples in the training split (official train minus validation)
    val: int  # carved from the official training set by a seeded random split
    test: int  # the official test set
    version: int = 1  # bump when the prepared data would change (split, orientation, ...)
    # Prepared once into compact arrays under <data root>/prepared/. Off for data that is
    # bundled and decodes in milliseconds: it then needs no writable data root at all.
    cache_prepared: bool = True

    @property
    def features(self) -> int:
        c, h, w = self.image_shape
        return c * h * w

    @property
    def official_train(self) -> int:
        """Examples in the official training file(s), from which validation is carved."""
        return self.train + self.val


def _mnist_like(name: str, summary: str, classes: int = 10) -> DatasetInfo:
    return DatasetInfo(
        name=name,
        summary=summary,
        module="runner.datasets.idx",
        classes=classes,
        image_shape=(1, 28, 28),
        train=55000,
        val=5000,
        test=10000,
    )


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
            cache_prepared=False,
        ),
        # version 1 still: going through the prepared-array cache yields bit-identical
        # inputs (same split, same pixels, same normalisation), so finished cells stay valid.
        _mnist_like("mnist", "MNIST handwritten digits"),
        _mnist_like("fashion_mnist", "Fashion-MNIST clothing images"),
        _mnist_like("kmnist", "Kuzushiji-MNIST cursive Japanese characters"),
        DatasetInfo(
            name="emnist_letters",
            summary="EMNIST-Letters handwritten letters a-z (labels 0..25)",
            module="runner.datasets.idx",
            classes=26,
            image_shape=(1, 28, 28),
            train=104800,
            val=20000,
            test=20800,
        ),
        DatasetInfo(
            name="norb",
            summary="small NORB toys, one image of each stereo pair (96x96)",
            module="runner.datasets.norb",
            classes=5,
            image_shape=(1, 96, 96),
            train=22300,
            val=2000,
            test=24300,
        ),
        DatasetInfo(
            name="cifar10",
            summary="CIFAR-10 colour images",
            module="runner.datasets.cifar",
            classes=10,
            image_shape=(3, 32, 32),
            train=45000,
            val=5000,
            test=10000,
        ),
    ]
}
