"""CIFAR-10: the python pickles, read through torchvision's CIFAR10 class.

Files in torchvision's layout: `<data root>/cifar-10-batches-py/` with `data_batch_1` ..
`data_batch_5`, `test_batch` and `batches.meta`. Each file's md5 is checked against the ones
torchvision publishes (its class attributes) before reading, and a mismatch names the file.
That check is on unless the caller explicitly passes `verify_checksums=False`: files that a
test fabricates (or a user re-encoded) cannot match, and then only their structure is
checked. Images come out as (N, 3, 32, 32) uint8, channel-major as stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from runner.datasets.files import digest, fetch_lock
from runner.datasets.locations import OFFLINE_ENV
from runner.datasets.official import OfficialSplits
from runner.errors import DatasetError

FOLDER = "cifar-10-batches-py"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CLASSES = 10


def _published() -> list[tuple[str, str]]:
    """(file name, md5) of every file, from torchvision's CIFAR10 class."""
    from torchvision.datasets import CIFAR10

    files = [*CIFAR10.train_list, *CIFAR10.test_list]
    return [(str(n), str(m)) for n, m in files] + [(CIFAR10.meta["filename"], CIFAR10.meta["md5"])]


def expected_files(name: str, root: Path) -> list[Path]:
    return [root / FOLDER / file for file, _ in _published()]


def _missing(root: Path) -> list[Path]:
    return [p for p in expected_files("cifar10", root) if not p.is_file()]


def _missing_message(root: Path, missing: list[Path], why: str) -> str:
    listing = "\n".join(f"    {p}" for p in missing)
    return (
        f"dataset 'cifar10' is not in the data root {root} ({why}).\n"
        f"  Expected these files:\n{listing}\n"
        f"  Get {URL} and unpack it in {root} (it holds {FOLDER}/), or point --data-root "
        f"(or $CPUSWEEP_DATA_ROOT) at a folder that has {FOLDER}/."
    )


def _unchecked_class() -> Any:
    """torchvision's CIFAR10 without its own md5 pass: `_verify` has just done it (and named
    the failing file, which torchvision does not), or the caller explicitly skipped it."""
    from torchvision.datasets import CIFAR10

    class _CIFAR10Prechecked(CIFAR10):
        train_list: ClassVar = [[file, None] for file, _ in CIFAR10.train_list]
        test_list: ClassVar = [[file, None] for file, _ in CIFAR10.test_list]
        meta: ClassVar = {**CIFAR10.meta, "md5": None}

    return _CIFAR10Prechecked


def _verify(root: Path) -> None:
    for file, md5 in _published():
        path = root / FOLDER / file
        if digest(path, "md5") != md5:
            raise DatasetError(
                f"dataset 'cifar10': {path} does not match its published md5 ({md5}): it is "
                f"truncated, corrupt or not the official file. Delete {root / FOLDER} and "
                f"fetch {URL} again."
            )


def _corrupt(root: Path, problem: str) -> DatasetError:
    return DatasetError(
        f"dataset 'cifar10': the batches under {root / FOLDER} are corrupt ({problem}). "
        f"Delete that folder and fetch {URL} again."
    )


def ensure_available(name: str, root: Path, download: bool, verify_checksums: bool = True) -> None:
    if _missing(root):
        with fetch_lock(root, name):
            if _missing(root):  # another process may have fetched it meanwhile
                _download(root, download)
    if verify_checksums:
        _verify(root)


def _download(root: Path, download: bool) -> None:
    if not download:
        raise DatasetError(
            _missing_message(root, _missing(root), f"downloads are off: {OFFLINE_ENV} is set")
        )
    from torchvision.datasets import CIFAR10

    try:  # torchvision checks the archive's md5 and unpacks it
        CIFAR10(root=str(root), train=True, download=True)
    except Exception as exc:
        raise DatasetError(
            _missing_message(root, _missing(root), f"download failed: {exc}")
        ) from None


def read_official(name: str, root: Path, verify_checksums: bool = True) -> OfficialSplits:
    missing = _missing(root)
    if missing:
        raise DatasetError(_missing_message(root, missing, "files missing"))
    if verify_checksums:
        _verify(root)
    cls = _unchecked_class()
    parts = []
    for train in (True, False):
        try:
            data = cls(root=str(root), train=train, download=False)
            images = torch.from_numpy(data.data).permute(0, 3, 1, 2).contiguous()  # (N,3,32,32)
            labels = torch.tensor(data.targets, dtype=torch.int64)
        except Exception as exc:  # unpickling errors, wrong shapes, missing keys...
            files = "\n".join(f"    {p}" for p in expected_files(name, root))
            raise DatasetError(
                f"dataset 'cifar10': torchvision could not read the batches under "
                f"{root / FOLDER} ({type(exc).__name__}: {exc}); a file is truncated or "
                f"corrupt. Delete {root / FOLDER} and fetch {URL} again. Files:\n{files}"
            ) from None
        which = "training" if train else "test"
        if len(labels) != len(images):
            raise _corrupt(root, f"{len(images)} {which} images but {len(labels)} labels")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= CLASSES):
            found = f"{int(labels.min())}..{int(labels.max())}"
            raise _corrupt(root, f"{which} labels run {found}, expected 0..{CLASSES - 1}")
        parts.append((images, labels))
    return OfficialSplits(
        train_images=parts[0][0],
        train_labels=parts[0][1],
        test_images=parts[1][0],
        test_labels=parts[1][1],
    )
