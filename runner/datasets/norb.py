"""Small NORB: our own reader for its binary matrix files (torchvision has no NORB class).

Files: `<data root>/smallnorb/smallnorb-5x46789x9x18x6x2x96x96-training-{dat,cat}.mat` and
`smallnorb-5x01235x9x18x6x2x96x96-testing-{dat,cat}.mat`, plain or gzipped (`.mat.gz`, as
published); the `-info.mat` files are not needed. The test set is the official *testing*
file (the paper's published loader read the training file twice).

Binary matrix format: a little-endian int32 header (a magic number that gives the element
type, the number of dimensions, then at least three dimension slots, unused ones 1), then
the raw little-endian data. `dat` is (24300, 2, 96, 96) uint8: a stereo pair per example;
`cat` (24300,) int32 categories 0..4.

We keep one image of each stereo pair, the first (left camera): the two differ by a small
viewpoint shift only, so keeping both would double the data with near-copies, and near-copies
of one pair on both sides of the train / validation split would leak. Pixels stay uint8
0..255 (no float round trip through uint8, the other published pitfall).
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from runner.datasets.files import fetch_lock, open_maybe_gzip
from runner.datasets.locations import OFFLINE_ENV
from runner.datasets.official import OfficialSplits
from runner.errors import DatasetError

FOLDER = "smallnorb"
URL = "https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/"
STEREO_INDEX = 0  # the left camera's image of each pair
CLASSES = 5
SIDE = 96

_PREFIX = {
    "train": "smallnorb-5x46789x9x18x6x2x96x96-training",
    "test": "smallnorb-5x01235x9x18x6x2x96x96-testing",
}
_UINT8_MAGIC = 0x1E3D4C55
_INT32_MAGIC = 0x1E3D4C54
_KINDS: dict[
    str, tuple[int, np.dtype[Any], tuple[int, ...]]
] = {  # kind: (magic, element dtype, dimensions after the example count)
    "dat": (_UINT8_MAGIC, np.dtype(np.uint8), (2, SIDE, SIDE)),
    "cat": (_INT32_MAGIC, np.dtype("<i4"), ()),
}
_PAIRS_PER_READ = 1024


def _plain_path(root: Path, split: str, kind: str) -> Path:
    return root / FOLDER / f"{_PREFIX[split]}-{kind}.mat"


def _resolve(root: Path, split: str, kind: str) -> Path | None:
    """The plain file if it is there, else the gzipped one, else None."""
    plain = _plain_path(root, split, kind)
    gz = plain.with_name(plain.name + ".gz")
    return plain if plain.is_file() else gz if gz.is_file() else None


_FILES = [(split, kind) for split in ("train", "test") for kind in ("dat", "cat")]


def expected_files(name: str, root: Path) -> list[Path]:
    """The files read (the .gz one where only that is there), in reading order."""
    return [_resolve(root, s, k) or _plain_path(root, s, k) for s, k in _FILES]


def _missing(root: Path) -> list[Path]:
    return [_plain_path(root, s, k) for s, k in _FILES if _resolve(root, s, k) is None]


def _missing_message(root: Path, missing: list[Path], why: str) -> str:
    listing = "\n".join(f"    {p}  (or {p.name}.gz)" for p in missing)
    return (
        f"dataset 'norb' (small NORB) is not in the data root {root} ({why}).\n"
        f"  Expected these files, plain or gzipped:\n{listing}\n"
        f"  Get them from {URL} and put them there, or point --data-root "
        f"(or $CPUSWEEP_DATA_ROOT) at a folder that has {FOLDER}/."
    )


def _corrupt(path: Path, problem: str) -> DatasetError:
    return DatasetError(
        f"dataset 'norb': {path} is truncated or corrupt ({problem}). Delete it and fetch it "
        f"again from {URL}"
    )


def ensure_available(name: str, root: Path, download: bool, verify_checksums: bool = True) -> None:
    if _missing(root):
        with fetch_lock(root, name):
            if _missing(root):  # another process may have fetched them meanwhile
                _download(root, download)
    # No checksums are published for small NORB: check that every file is whole instead.
    for split, kind in _FILES:
        path = _resolve(root, split, kind)
        assert path is not None
        _check_length(path, kind, _read_header(path, kind))


def _download(root: Path, download: bool) -> None:
    if not download:
        raise DatasetError(
            _missing_message(root, _missing(root), f"downloads are off: {OFFLINE_ENV} is set")
        )
    from torchvision.datasets.utils import download_url

    folder = root / FOLDER
    for plain in _missing(root):
        name = plain.name + ".gz"
        partial = f".{name}.part"
        try:
            download_url(URL + name, str(folder), filename=partial)
            os.replace(folder / partial, folder / name)  # whole, or not there at all
        except Exception as exc:  # URLError, OSError, RuntimeError...
            (folder / partial).unlink(missing_ok=True)
            raise DatasetError(
                _missing_message(root, _missing(root), f"download failed: {exc}")
            ) from None


def _read_exact(handle: BinaryIO, n: int, path: Path, what: str) -> bytes:
    try:
        data = handle.read(n)
    except (OSError, EOFError, zlib.error) as exc:  # a damaged gzip stream
        raise _corrupt(path, f"{type(exc).__name__}: {exc}") from None
    if len(data) != n:
        raise _corrupt(path, f"ends inside its {what}")
    return data


def _parse_header(handle: BinaryIO, path: Path, kind: str) -> tuple[int, ...]:
    magic_expected, dtype, tail = _KINDS[kind]
    magic, ndim = struct.unpack("<ii", _read_exact(handle, 8, path, "header"))
    if magic != magic_expected:
        raise _corrupt(
            path, f"magic number {magic:#x}, expected {magic_expected:#x} ({dtype} matrix)"
        )
    if ndim != 1 + len(tail):
        raise _corrupt(path, f"{ndim} dimensions, expected {1 + len(tail)}")
    slots = max(3, ndim)
    dims = struct.unpack(f"<{slots}i", _read_exact(handle, 4 * slots, path, "header"))
    if tuple(dims[1:ndim]) != tail or any(d != 1 for d in dims[ndim:]) or dims[0] < 0:
        raise _corrupt(path, f"dimensions {dims[:ndim]}, expected (N, {', '.join(map(str, tail))})")
    return tuple(dims[:ndim])


def _read_header(path: Path, kind: str) -> tuple[int, ...]:
    with open_maybe_gzip(path) as handle:
        return _parse_header(handle, path, kind)


def _header_bytes(ndim: int) -> int:
    return 8 + 4 * max(3, ndim)


def _check_length(path: Path, kind: str, dims: tuple[int, ...]) -> None:
    """A cheap wholeness check: the file's (or, gzipped, the decompressed) length must be the
    header's promise. Gzip records the decompressed length mod 2^32 in its last 4 bytes."""
    expected = _header_bytes(len(dims)) + math.prod(dims) * _KINDS[kind][1].itemsize
    if path.suffix == ".gz":
        size = path.stat().st_size
        with open(path, "rb") as handle:
            handle.seek(max(size - 4, 0))
            trailer = handle.read(4)
        found = struct.unpack("<I", trailer)[0] if len(trailer) == 4 else -1
        if found != expected % 2**32:
            raise _corrupt(
                path,
                f"its gzip trailer gives {found} bytes, the header promises "
                f"{expected}: an incomplete download?",
            )
        return
    size = path.stat().st_size
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        raise _corrupt(path, f"{state}: {size} bytes, its header {dims} promises {expected}")


def _read_matrix(path: Path, kind: str) -> np.ndarray:
    """A whole dat (left images only, (N, 96, 96)) or cat ((N,)) file."""
    dtype = _KINDS[kind][1]
    with open_maybe_gzip(path) as handle:
        dims = _parse_header(handle, path, kind)
        n = dims[0]
        if kind == "cat":
            data = np.frombuffer(_read_exact(handle, n * 4, path, "data"), dtype=dtype)
            result = data.astype(np.int64)
        else:
            pair = 2 * SIDE * SIDE
            result = np.empty((n, SIDE, SIDE), dtype=np.uint8)
            for start in range(0, n, _PAIRS_PER_READ):
                count = min(_PAIRS_PER_READ, n - start)
                chunk = _read_exact(handle, count * pair, path, "data")
                pairs = np.frombuffer(chunk, dtype=np.uint8).reshape(count, 2, SIDE, SIDE)
                result[start : start + count] = pairs[:, STEREO_INDEX]
        try:
            extra = handle.read(1)  # also makes gzip check its CRC and length
        except (OSError, EOFError, zlib.error) as exc:
            raise _corrupt(path, f"{type(exc).__name__}: {exc}") from None
        if extra:
            raise _corrupt(path, "longer than its header says")
    return result


def read_official(name: str, root: Path, verify_checksums: bool = True) -> OfficialSplits:
    missing = _missing(root)
    if missing:
        raise DatasetError(_missing_message(root, missing, "files missing"))
    parts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for split in ("train", "test"):
        dat_path, cat_path = _resolve(root, split, "dat"), _resolve(root, split, "cat")
        assert dat_path is not None and cat_path is not None
        images = _read_matrix(dat_path, "dat")
        labels = _read_matrix(cat_path, "cat")
        if len(images) != len(labels):
            raise _corrupt(
                cat_path, f"{len(labels)} labels for the {len(images)} pairs of {dat_path.name}"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= CLASSES):
            raise _corrupt(
                cat_path, f"categories {labels.min()}..{labels.max()}, expected 0..{CLASSES - 1}"
            )
        parts[split] = (
            torch.from_numpy(images).unsqueeze(1),  # (N, 1, 96, 96)
            torch.from_numpy(labels),
        )
    return OfficialSplits(
        train_images=parts["train"][0],
        train_labels=parts["train"][1],
        test_images=parts["test"][0],
        test_labels=parts["test"][1],
    )
