"""CIFAR-10: the python pickles, read without ever running code from them.

Files in torchvision's layout: `<data root>/cifar-10-batches-py/` with `data_batch_1` ..
`data_batch_5`, `test_batch` and `batches.meta`. Each file's md5 is checked against the ones
torchvision publishes (its class attributes) before reading, and a mismatch names the file.
That check is on unless the caller explicitly passes `verify_checksums=False`: files that a
test fabricates (or a user re-encoded) cannot match, and then only their structure is
checked. Images come out as (N, 3, 32, 32) uint8, channel-major as stored.

The batches are pickles by format, and unpickling can run any code a file names. So they are
read with an unpickler that builds only what a CIFAR batch holds (dicts, lists, strings,
numbers and numpy arrays) and refuses every other global: a planted or tampered file is a
clear error, also when checksums are skipped.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
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


# The globals a CIFAR batch pickle names: numpy's array reconstruction (under numpy 1's and
# numpy 2's module names), and the codec Python 3 uses for bytes in protocol-2 pickles.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class UnsafePickle(pickle.UnpicklingError):
    """A pickle names something a CIFAR batch never holds."""


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SAFE_GLOBALS:
            raise UnsafePickle(f"it asks to load {module}.{name}, which a CIFAR batch never holds")
        return super().find_class(module, name)


def load_batch(path: Path) -> Any:
    """Unpickle one CIFAR batch file with `_BatchUnpickler` (py2 strings as latin-1, as
    torchvision reads them)."""
    return _BatchUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()


def _read_split(root: Path, files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for file in files:
        path = root / FOLDER / file
        try:
            entry = load_batch(path)
            data = np.asarray(entry["data"], dtype=np.uint8)
            images.append(data.reshape(-1, 3, 32, 32))  # channel-major rows, as published
            labels.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
        except UnsafePickle as exc:
            raise DatasetError(
                f"dataset 'cifar10': {path} is not a CIFAR-10 batch ({exc}); it was not "
                f"loaded. Delete {root / FOLDER} and fetch {URL} again."
            ) from None
        except Exception as exc:  # unpickling errors, wrong shapes, missing keys...
            raise DatasetError(
                f"dataset 'cifar10': could not read {path} ({type(exc).__name__}: {exc}); "
                f"it is truncated or corrupt. Delete {root / FOLDER} and fetch {URL} again."
            ) from None
    return (
        torch.from_numpy(np.concatenate(images)).contiguous(),
        torch.tensor(labels, dtype=torch.int64),
    )


def _batch_files(train: bool) -> list[str]:
    from torchvision.datasets import CIFAR10

    return [str(file) for file, _ in (CIFAR10.train_list if train else CIFAR10.test_list)]


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
    parts = []
    for train in (True, False):
        images, labels = _read_split(root, _batch_files(train))
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
