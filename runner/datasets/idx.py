"""MNIST-family datasets stored as IDX files, read through torchvision's own classes.

Files live in torchvision's layout, `<data root>/<ClassName>/raw/<file>`, so a folder a user
already has for torchvision works as is. A missing file is downloaded by torchvision where
the network allows (and downloads are not switched off); otherwise the error names every
file that is expected and where it goes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from runner.datasets.locations import OFFLINE_ENV
from runner.datasets.official import OfficialSplits
from runner.errors import DatasetError


@dataclass(frozen=True)
class IdxSource:
    dataset: str  # our name
    folder: str  # torchvision's class name, which is also its folder name
    files: tuple[str, ...]  # the uncompressed IDX files under <folder>/raw/
    url_hint: str


SOURCES: dict[str, IdxSource] = {
    "mnist": IdxSource(
        dataset="mnist",
        folder="MNIST",
        files=(
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ),
        url_hint="https://ossci-datasets.s3.amazonaws.com/mnist/ (the four .gz files, "
        "uncompressed)",
    ),
}


def _torchvision_class(source: IdxSource) -> type:
    import torchvision.datasets as tvd

    cls: type = getattr(tvd, source.folder)
    return cls


def expected_paths(source: IdxSource, root: Path) -> list[Path]:
    return [root / source.folder / "raw" / name for name in source.files]


def _missing(source: IdxSource, root: Path) -> list[Path]:
    return [p for p in expected_paths(source, root) if not p.is_file()]


@contextlib.contextmanager
def _download_lock(root: Path, name: str) -> Iterator[None]:
    """Serialise downloads of one dataset between processes on this node."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _missing_message(source: IdxSource, root: Path, missing: list[Path], why: str) -> str:
    listing = "\n".join(f"    {p}" for p in missing)
    return (
        f"dataset {source.dataset!r} is not in the data root {root} ({why}).\n"
        f"  Expected these files (uncompressed IDX):\n{listing}\n"
        f"  Get them from {source.url_hint} and put them there, or point --data-root "
        f"(or $CPUSWEEP_DATA_ROOT) at a folder that has {source.folder}/raw/."
    )


def ensure_available(name: str, root: Path, download: bool) -> None:
    source = SOURCES[name]
    if not _missing(source, root):
        return
    if not download:
        raise DatasetError(
            _missing_message(
                source, root, _missing(source, root), f"downloads are off: {OFFLINE_ENV} is set"
            )
        )
    with _download_lock(root, name):
        if not _missing(source, root):  # another process fetched it meanwhile
            return
        cls = _torchvision_class(source)
        try:
            for train in (True, False):
                cls(root=str(root), train=train, download=True)
        except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError...
            raise DatasetError(
                _missing_message(source, root, _missing(source, root), f"download failed: {exc}")
            ) from None


def read_official(name: str, root: Path) -> OfficialSplits:
    source = SOURCES[name]
    missing = _missing(source, root)
    if missing:
        raise DatasetError(_missing_message(source, root, missing, "files missing"))
    cls = _torchvision_class(source)
    try:
        train = cls(root=str(root), train=True, download=False)
        test = cls(root=str(root), train=False, download=False)
    except Exception as exc:
        files = "\n".join(f"    {p}" for p in expected_paths(source, root))
        raise DatasetError(
            f"dataset {name!r}: torchvision could not read the IDX files under "
            f"{root / source.folder / 'raw'} ({type(exc).__name__}: {exc}); a file may be "
            f"truncated or corrupt. Delete it and fetch it again. Files:\n{files}"
        ) from None
    return OfficialSplits(
        train_images=train.data.unsqueeze(1).contiguous(),
        train_labels=train.targets.to(torch.int64),
        test_images=test.data.unsqueeze(1).contiguous(),
        test_labels=test.targets.to(torch.int64),
    )


def is_present(name: str, root: Path) -> bool:
    return not _missing(SOURCES[name], root) and os.access(root, os.R_OK)
