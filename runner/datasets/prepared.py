"""Prepared arrays: each dataset's train / validation / test split decoded once, kept on disk.

`<data root>/prepared/<name>-v<version>-split<split_seed>/` holds the three splits as uint8
images (N, C, H, W) and int64 labels in `.npy` files, and `meta.json`: sizes, the
normalisation statistics of the training split, the validation split's fingerprint, the
sha256 of every array and of every official file it was made from. Cells then load these
arrays (a quick read, no decoding) instead of the official files.

Safe when several processes on a node start at once: one prepares under a file lock while
the others wait, and the folder appears by an atomic rename, whole or not at all. Every load
checks each array against its recorded size and sha256, so a damaged copy is never used: it
is prepared again from the official files, or reported. A data root that cannot be written
(a read-only shared mount) still works: the splits are then prepared in memory, each time.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runner.datasets.files import digest, file_lock, fsync_dir, is_unwritable
from runner.datasets.official import OfficialSplits
from runner.datasets.registry import DATASETS, DatasetInfo
from runner.errors import DatasetError

log = logging.getLogger("cpusweep")

FOLDER = "prepared"
FORMAT = 1  # of the folder's layout and meta.json; not part of any cell key
META = "meta.json"
ARRAYS = ("train_images", "train_labels", "val_images", "val_labels", "test_images", "test_labels")
_STATS_CHUNK = 1 << 24  # pixels per bincount, to keep its int64 temporary small


@dataclass(frozen=True)
class PreparedSplits:
    """The three splits as compact arrays, and what is known about them."""

    info: DatasetInfo
    split_seed: int
    arrays: dict[str, np.ndarray]  # ARRAYS: uint8 (N, C, H, W) images, int64 (N,) labels
    norm_mean: float  # of the training split's pixels scaled to 0..1
    norm_std: float
    split_fingerprint: str  # identifies the validation split
    path: Path | None = None  # where it is stored; None when prepared in memory only
    meta: dict[str, Any] = field(default_factory=dict)

    def sizes(self) -> dict[str, int]:
        return {s: len(self.arrays[f"{s}_labels"]) for s in ("train", "val", "test")}


class DamagedCopy(Exception):
    """A prepared folder exists but must not be used."""


def info_for(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    return DATASETS[name]


def reader(info: DatasetInfo) -> Any:
    return importlib.import_module(info.module)


def prepared_path(root: Path, info: DatasetInfo, split_seed: int) -> Path:
    return root / FOLDER / f"{info.name}-v{info.version}-split{split_seed}"


# --- from official files to splits (in memory) -----------------------------------------------


def carve_validation(
    n: int, info: DatasetInfo, split_seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random split of the official training set into sorted (train, val) indices.

    The validation share is the paper's (e.g. 5000 of 60000 for MNIST), so a smaller
    fabricated or truncated file is split in the same proportion.
    """
    n_val = round(n * info.val / (info.train + info.val))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    return order[n_val:].sort().values, order[:n_val].sort().values


def normalisation_stats(train_images: np.ndarray) -> tuple[float, float]:
    """Mean and (unbiased) standard deviation of the pixels scaled to 0..1, in float64.

    From a histogram of the uint8 values: exact sums, and no float64 copy of the split
    (1.6 GB for NORB). Agrees with `(x / 255).mean()`, `.std()` to the last bits, and so
    gives the same float32 inputs as the direct computation.
    """
    flat = train_images.reshape(-1)
    counts = np.zeros(256, dtype=np.int64)
    for start in range(0, len(flat), _STATS_CHUNK):
        counts += np.bincount(flat[start : start + _STATS_CHUNK], minlength=256)
    n = int(counts.sum())
    values = np.arange(256, dtype=np.float64) / 255.0
    mean = float((counts * values).sum() / max(n, 1))
    var = float((counts * (values - mean) ** 2).sum() / (n - 1)) if n > 1 else 0.0
    std = var**0.5
    return mean, (std if std > 0 else 1.0)


def split_official(official: OfficialSplits, info: DatasetInfo, split_seed: int) -> PreparedSplits:
    train_idx, val_idx = carve_validation(len(official.train_labels), info, split_seed)
    arrays = {
        "train_images": official.train_images[train_idx].numpy(),
        "train_labels": official.train_labels[train_idx].numpy(),
        "val_images": official.train_images[val_idx].numpy(),
        "val_labels": official.train_labels[val_idx].numpy(),
        "test_images": official.test_images.contiguous().numpy(),
        "test_labels": official.test_labels.contiguous().numpy(),
    }
    for key in ARRAYS:
        expected = np.uint8 if key.endswith("images") else np.int64
        assert arrays[key].dtype == expected, (key, arrays[key].dtype)
    mean, std = normalisation_stats(arrays["train_images"])
    return PreparedSplits(
        info=info,
        split_seed=split_seed,
        arrays=arrays,
        norm_mean=mean,
        norm_std=std,
        split_fingerprint=hashlib.sha256(val_idx.numpy().tobytes()).hexdigest()[:12],
    )


def _from_official(
    info: DatasetInfo, root: Path, split_seed: int, download: bool, verify_checksums: bool
) -> tuple[PreparedSplits, list[dict[str, Any]]]:
    """Fetch (where allowed), check and read the official files, then split them."""
    module = reader(info)
    module.ensure_available(info.name, root, download, verify_checksums)
    official = module.read_official(info.name, root, verify_checksums)
    n_train, n_test = len(official.train_labels), len(official.test_labels)
    if (n_train, n_test) != (info.official_train, info.test):
        log.warning(
            "%s: the official files under %s hold %d training and %d test examples, the "
            "published dataset %d and %d; the validation split keeps the paper's share",
            info.name,
            root,
            n_train,
            n_test,
            info.official_train,
            info.test,
        )
    sources = [_source_record(path, root) for path in module.expected_files(info.name, root)]
    return split_official(official, info, split_seed), sources


def _source_record(path: Path, root: Path) -> dict[str, Any]:
    stat = path.stat()
    return {
        "file": str(path.relative_to(root)),
        "bytes": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256": digest(path),
    }


# --- on disk ---------------------------------------------------------------------------------


def read_meta(path: Path) -> dict[str, Any]:
    """The folder's meta.json, or DamagedCopy."""
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DamagedCopy(f"{META} is missing") from None
    except (OSError, ValueError) as exc:
        raise DamagedCopy(f"{META} is unreadable ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DamagedCopy(f"{META} is not format {FORMAT}")
    return meta


def verify(path: Path, info: DatasetInfo, split_seed: int) -> dict[str, Any]:
    """The meta of an intact prepared folder for this dataset version and split, or DamagedCopy."""
    meta = read_meta(path)
    identity = (meta.get("dataset"), meta.get("version"), meta.get("split_seed"))
    if identity != (info.name, info.version, split_seed):
        raise DamagedCopy(
            f"{META} describes {identity}, not {(info.name, info.version, split_seed)}"
        )
    for key in ARRAYS:
        record = meta.get("arrays", {}).get(key)
        if not isinstance(record, dict):
            raise DamagedCopy(f"{META} has no entry for {key}")
        file = path / str(record["file"])
        try:
            size = file.stat().st_size
        except FileNotFoundError:
            raise DamagedCopy(f"{file.name} is missing") from None
        if size != record["bytes"]:
            raise DamagedCopy(f"{file.name} has {size} bytes, {record['bytes']} were written")
        if digest(file) != record["sha256"]:
            raise DamagedCopy(f"{file.name} does not match its recorded sha256")
    _check_sources_unchanged(meta, path.parent.parent)
    return meta


def _check_sources_unchanged(meta: dict[str, Any], root: Path) -> None:
    """DamagedCopy when an official file the copy was made from has since been replaced (a
    new download, a repaired file): the copy is outdated. A file that is gone is fine (they
    may be deleted once prepared); one with a new mtime only is hashed to be sure."""
    for source in meta.get("sources", []):
        file = root / str(source["file"])
        try:
            stat = file.stat()
        except FileNotFoundError:
            continue
        if stat.st_size == source["bytes"] and stat.st_mtime_ns == source["mtime_ns"]:
            continue
        if stat.st_size != source["bytes"] or digest(file) != source["sha256"]:
            raise DamagedCopy(f"outdated: {source['file']} has changed since it was prepared")


def load(path: Path, info: DatasetInfo, split_seed: int) -> PreparedSplits:
    """An intact prepared folder's arrays (memory-mapped), or DamagedCopy."""
    meta = verify(path, info, split_seed)
    arrays = {}
    for key in ARRAYS:
        record = meta["arrays"][key]
        try:
            # Copy-on-write mapping: pages are read on first use and shared between
            # processes; torch can wrap it without a copy.
            array = np.load(path / record["file"], mmap_mode="c", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DamagedCopy(f"{record['file']} is unreadable ({exc})") from None
        if list(array.shape) != record["shape"] or str(array.dtype) != record["dtype"]:
            raise DamagedCopy(f"{record['file']} holds {array.shape} {array.dtype}")
        arrays[key] = array
    return PreparedSplits(
        info=info,
        split_seed=split_seed,
        arrays=arrays,
        norm_mean=float(meta["norm_mean"]),
        norm_std=float(meta["norm_std"]),
        split_fingerprint=str(meta["split_fingerprint"]),
        path=path,
        meta=meta,
    )


def _write(
    target: Path, splits: PreparedSplits, sources: list[dict[str, Any]], verify_checksums: bool
) -> dict[str, Any]:
    """Write the folder beside its final place, then rename it there: whole or not at all."""
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        records = {}
        for key in ARRAYS:
            file = tmp / f"{key}.npy"
            with open(file, "wb") as handle:
                np.save(handle, splits.arrays[key], allow_pickle=False)
                handle.flush()
                os.fsync(handle.fileno())
            records[key] = {
                "file": file.name,
                "shape": list(splits.arrays[key].shape),
                "dtype": str(splits.arrays[key].dtype),
                "bytes": file.stat().st_size,
                "sha256": digest(file),
            }
        info = splits.info
        meta = {
            "format": FORMAT,
            "dataset": info.name,
            "version": info.version,
            "split_seed": splits.split_seed,
            "classes": info.classes,
            "image_shape": list(info.image_shape),
            "sizes": splits.sizes(),
            "norm_mean": splits.norm_mean,
            "norm_std": splits.norm_std,
            "split_fingerprint": splits.split_fingerprint,
            "arrays": records,
            "sources": sources,
            "published_checksums_checked": verify_checksums,
            "prepared_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        with open(tmp / META, "w", encoding="utf-8") as handle:
            json.dump(meta, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        fsync_dir(tmp)
        aside = None
        if target.exists():  # a damaged copy: move it out of the way first
            aside = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
            os.replace(target, aside / "old")
        os.rename(tmp, target)
        fsync_dir(target.parent)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        return meta
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove_leftovers(target: Path) -> None:
    """Temporary folders of writers that were killed. Only the lock holder writes, so any
    that exist while we hold the lock are abandoned."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in target.parent.glob(f".{target.name}.old-*"):
        shutil.rmtree(stale, ignore_errors=True)


def checksums_waived(info: DatasetInfo, root: Path) -> bool:
    """Whether the user explicitly skipped published checksums (`data prepare
    --skip-checksums`) for exactly the official files now on disk.

    That choice is recorded in the prepared copy's meta.json, with each file's size and
    modification time, and holds for those files only: for the submit preflight and for
    other split seeds alike. Files replaced since are checked again.
    """
    current = {}
    for path in reader(info).expected_files(info.name, root):
        try:
            stat = path.stat()
        except OSError:
            return False
        current[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    for folder in sorted((root / FOLDER).glob(f"{info.name}-v{info.version}-split*")):
        try:
            meta = read_meta(folder)
        except DamagedCopy:
            continue
        if meta.get("published_checksums_checked", True) or meta.get("version") != info.version:
            continue
        recorded = {s["file"]: (s["bytes"], s["mtime_ns"]) for s in meta.get("sources", [])}
        if current and recorded == current:
            log.info(
                "%s: published checksums were skipped for these files when %s was "
                "prepared (--skip-checksums); not checking them",
                info.name,
                folder,
            )
            return True
    return False


def _in_memory(
    info: DatasetInfo, root: Path, split_seed: int, download: bool, verify_checksums: bool
) -> PreparedSplits:
    splits, _ = _from_official(info, root, split_seed, download, verify_checksums)
    return splits


def prepare(
    name: str,
    root: Path,
    split_seed: int,
    download: bool = True,
    verify_checksums: bool = True,
) -> PreparedSplits:
    """The dataset's prepared splits: from disk when an intact copy is there, else made from
    the official files (fetched where allowed) and stored for every later load."""
    info = info_for(name)
    if not info.cache_prepared:
        return _in_memory(info, root, split_seed, download, verify_checksums)
    target = prepared_path(root, info, split_seed)
    with contextlib.suppress(DamagedCopy):
        return load(target, info, split_seed)  # the usual case: no lock needed

    with contextlib.ExitStack() as stack:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            stack.enter_context(
                file_lock(
                    target.parent / f".{target.name}.lock",
                    f"waiting for another process preparing {target.name}",
                )
            )
        except OSError as exc:
            if not is_unwritable(exc):
                raise
            log.warning("cannot write to %s (%s): preparing %s in memory", root, exc, name)
            return _in_memory(info, root, split_seed, download, verify_checksums)

        damage = None
        if target.exists():
            try:
                return load(target, info, split_seed)  # another process finished it
            except DamagedCopy as exc:
                damage = str(exc)
                log.warning("prepared copy %s is damaged (%s): preparing it again", target, exc)
        _remove_leftovers(target)
        verify_checksums = verify_checksums and not checksums_waived(info, root)
        try:
            splits, sources = _from_official(info, root, split_seed, download, verify_checksums)
        except DatasetError as exc:
            if damage is None:
                raise
            raise DatasetError(
                f"the prepared copy {target} is damaged ({damage}) and cannot be prepared "
                f"again from the official files: {exc}"
            ) from None
        try:
            meta = _write(target, splits, sources, verify_checksums)
        except OSError as exc:
            if not is_unwritable(exc):
                raise
            log.warning("cannot write %s (%s): using %s prepared in memory", target, exc, name)
            return splits
        log.info("prepared %s in %s", name, target)
        return PreparedSplits(
            info=info,
            split_seed=split_seed,
            arrays=splits.arrays,
            norm_mean=splits.norm_mean,
            norm_std=splits.norm_std,
            split_fingerprint=splits.split_fingerprint,
            path=target,
            meta=meta,
        )
    raise AssertionError("unreachable")  # pragma: no cover - for the type checker
