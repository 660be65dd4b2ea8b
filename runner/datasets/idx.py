"""The MNIST family (MNIST, Fashion-MNIST, KMNIST, EMNIST-Letters): IDX files, read through
torchvision's own classes.

Files live in torchvision's layout, `<data root>/<ClassName>/raw/<file>`, so a folder a user
already has for torchvision works as is. Where only the published `.gz` files are there they
are decompressed in place (after checking torchvision's published md5 where one exists); a
missing file is downloaded by torchvision where the network allows (and downloads are not
switched off); otherwise the error names every file that is expected and where it goes.

Before anything is read, every file's header is checked against its size, so a truncated
or overlong file is reported by name instead of being half-read. EMNIST stores its images
transposed relative to MNIST (torchvision does not undo it) and numbers its letters 1..26:
both are fixed here, so every dataset comes out upright with labels from 0.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from runner.datasets.files import decompress_atomically, digest, fetch_lock
from runner.datasets.locations import OFFLINE_ENV
from runner.datasets.official import OfficialSplits
from runner.datasets.registry import DATASETS
from runner.errors import DatasetError

_IDX_UINT8 = 0x08


@dataclass(frozen=True)
class IdxSource:
    dataset: str  # our name
    folder: str  # torchvision's class name, which is also its folder name
    # The uncompressed IDX files under <folder>/raw/: train images, train labels,
    # test images, test labels.
    files: tuple[str, str, str, str]
    url_hint: str
    class_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. EMNIST's split
    transposed: bool = False  # images stored transposed relative to MNIST
    label_offset: int = 0  # subtracted from the stored labels so that they start at 0
    # torchvision publishes an md5 per .gz file (its class's `resources`) for these; EMNIST
    # has one only for its 560 MB zip of every split.
    published_gz_md5: bool = True


def _mnist_files() -> tuple[str, str, str, str]:
    return (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )


SOURCES: dict[str, IdxSource] = {
    "mnist": IdxSource(
        dataset="mnist",
        folder="MNIST",
        files=_mnist_files(),
        url_hint="https://ossci-datasets.s3.amazonaws.com/mnist/ (the four .gz files)",
    ),
    "fashion_mnist": IdxSource(
        dataset="fashion_mnist",
        folder="FashionMNIST",
        files=_mnist_files(),
        url_hint="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ (the four .gz files)",
    ),
    "kmnist": IdxSource(
        dataset="kmnist",
        folder="KMNIST",
        files=_mnist_files(),
        url_hint="http://codh.rois.ac.jp/kmnist/dataset/kmnist/ (the four .gz files)",
    ),
    "emnist_letters": IdxSource(
        dataset="emnist_letters",
        folder="EMNIST",
        files=(
            "emnist-letters-train-images-idx3-ubyte",
            "emnist-letters-train-labels-idx1-ubyte",
            "emnist-letters-test-images-idx3-ubyte",
            "emnist-letters-test-labels-idx1-ubyte",
        ),
        url_hint="https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip (unzip it: the "
        "letters files are in its gzip/ folder)",
        class_kwargs={"split": "letters"},
        transposed=True,
        label_offset=1,
        published_gz_md5=False,
    ),
}


def _torchvision_class(source: IdxSource) -> Any:
    import torchvision.datasets as tvd

    return getattr(tvd, source.folder)


def _raw(source: IdxSource, root: Path) -> Path:
    return root / source.folder / "raw"


def expected_files(name: str, root: Path) -> list[Path]:
    """The files read, in reading order."""
    source = SOURCES[name]
    return [_raw(source, root) / f for f in source.files]


def _missing(source: IdxSource, root: Path) -> list[Path]:
    return [p for p in expected_files(source.dataset, root) if not p.is_file()]


def _gz_candidates(path: Path) -> list[Path]:
    # torchvision leaves <file>.gz beside the file; EMNIST's zip unpacks into raw/gzip/.
    return [path.with_name(path.name + ".gz"), path.parent / "gzip" / (path.name + ".gz")]


def _published_md5(source: IdxSource) -> dict[str, str]:
    if not source.published_gz_md5:
        return {}
    return dict(_torchvision_class(source).resources)


def _missing_message(source: IdxSource, root: Path, missing: list[Path], why: str) -> str:
    listing = "\n".join(f"    {p}" for p in missing)
    return (
        f"dataset {source.dataset!r} is not in the data root {root} ({why}).\n"
        f"  Expected these files (uncompressed IDX, or the same names with .gz):\n{listing}\n"
        f"  Get them from {source.url_hint} and put them there, or point --data-root "
        f"(or $CPUSWEEP_DATA_ROOT) at a folder that has {source.folder}/raw/."
    )


def _corrupt(source: IdxSource, path: Path, problem: str) -> DatasetError:
    return DatasetError(
        f"dataset {source.dataset!r}: {path} is truncated or corrupt ({problem}). Delete it "
        f"and fetch it again (python -m runner data prepare {source.dataset} downloads it "
        f"where the network allows; else from {source.url_hint})."
    )


def _decompress_published_gz(source: IdxSource, root: Path, verify_checksums: bool) -> None:
    """Fill in missing IDX files from .gz files lying beside them (offline users often have
    only the downloaded .gz files), checking torchvision's published md5 first."""
    md5s = _published_md5(source) if verify_checksums else {}
    for path in _missing(source, root):
        gz = next((c for c in _gz_candidates(path) if c.is_file()), None)
        if gz is None:
            continue
        expected = md5s.get(gz.name)
        if expected is not None and digest(gz, "md5") != expected:
            raise DatasetError(
                f"dataset {source.dataset!r}: {gz} does not match its published md5 "
                f"({expected}): the download is incomplete or corrupt. Delete it and fetch "
                f"it again from {source.url_hint}."
            )
        decompress_atomically(gz, path)


def ensure_available(name: str, root: Path, download: bool, verify_checksums: bool = True) -> None:
    source = SOURCES[name]
    if _missing(source, root):
        with fetch_lock(root, name):
            # Another process may have fetched the files while this one waited.
            _decompress_published_gz(source, root, verify_checksums)
            if _missing(source, root):
                _download(source, root, download)
    check_files(name, root)


def _download(source: IdxSource, root: Path, download: bool) -> None:
    if not download:
        raise DatasetError(
            _missing_message(
                source, root, _missing(source, root), f"downloads are off: {OFFLINE_ENV} is set"
            )
        )
    cls = _torchvision_class(source)
    try:
        for train in (True, False):
            cls(root=str(root), train=train, download=True, **source.class_kwargs)
    except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError...
        raise DatasetError(
            _missing_message(source, root, _missing(source, root), f"download failed: {exc}")
        ) from None


def _idx_dims(source: IdxSource, path: Path, ndim: int) -> tuple[int, ...]:
    """The dimensions an IDX file's header promises, checked against the file's size."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(4 + 4 * ndim)
    if len(head) < 4 + 4 * ndim:
        raise _corrupt(source, path, f"only {size} bytes, shorter than an IDX header")
    zero, dtype, nd = struct.unpack(">HBB", head[:4])
    if zero != 0 or dtype != _IDX_UINT8 or nd != ndim:
        raise _corrupt(
            source, path, f"not an IDX file of {ndim}-dimensional uint8 data (header {head[:4]!r})"
        )
    dims = struct.unpack(f">{ndim}I", head[4:])
    expected = 4 + 4 * ndim + math.prod(dims)
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        raise _corrupt(
            source, path, f"{state}: {size} bytes, its header {dims} promises {expected}"
        )
    return dims


def check_files(name: str, root: Path) -> None:
    """Every file present, whole (header matches size), and images matching labels."""
    source = SOURCES[name]
    missing = _missing(source, root)
    if missing:
        raise DatasetError(_missing_message(source, root, missing, "files missing"))
    paths = expected_files(name, root)
    for images_path, labels_path in ((paths[0], paths[1]), (paths[2], paths[3])):
        images = _idx_dims(source, images_path, 3)
        labels = _idx_dims(source, labels_path, 1)
        if images[1:] != (28, 28):
            raise _corrupt(source, images_path, f"images of {images[1:]}, expected 28x28")
        if images[0] != labels[0]:
            raise _corrupt(
                source,
                labels_path,
                f"{labels[0]} labels for the {images[0]} images of {images_path.name}",
            )


def read_official(name: str, root: Path, verify_checksums: bool = True) -> OfficialSplits:
    source = SOURCES[name]
    check_files(name, root)
    cls = _torchvision_class(source)
    try:
        train = cls(root=str(root), train=True, download=False, **source.class_kwargs)
        test = cls(root=str(root), train=False, download=False, **source.class_kwargs)
    except Exception as exc:
        files = "\n".join(f"    {p}" for p in expected_files(name, root))
        raise DatasetError(
            f"dataset {name!r}: torchvision could not read the IDX files under "
            f"{_raw(source, root)} ({type(exc).__name__}: {exc}); a file may be "
            f"truncated or corrupt. Delete it and fetch it again. Files:\n{files}"
        ) from None
    paths = expected_files(name, root)
    classes = DATASETS[name].classes
    splits = []
    for part, labels_path in ((train, paths[1]), (test, paths[3])):
        images: torch.Tensor = part.data
        if source.transposed:
            images = images.transpose(1, 2)  # (N, H, W): EMNIST is stored column-major
        labels = part.targets.to(torch.int64) - source.label_offset
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= classes):
            low, high = source.label_offset, classes - 1 + source.label_offset
            found = f"{int(labels.min()) + low}..{int(labels.max()) + low}"
            raise _corrupt(source, labels_path, f"labels run {found}, expected {low}..{high}")
        splits.append((images.unsqueeze(1).contiguous(), labels))
    return OfficialSplits(
        train_images=splits[0][0],
        train_labels=splits[0][1],
        test_images=splits[1][0],
        test_labels=splits[1][1],
    )
