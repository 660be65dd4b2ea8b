"""What a data root holds: every dataset's official files (sizes, sha256) and prepared copies.

Read-only: `python -m runner data list` prints it. A file's sha256 is taken from the prepared
copy that recorded it when its size and modification time are unchanged, and computed
otherwise. Every prepared copy is verified (sizes and sha256 of its arrays).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from runner.datasets.files import digest
from runner.datasets.prepared import FOLDER, DamagedCopy, read_meta, reader, verify
from runner.datasets.registry import DATASETS, DatasetInfo

_PREPARED_NAME = re.compile(r"^(?P<name>[a-z0-9_]+)-v(?P<version>\d+)-split(?P<seed>\d+)$")


@dataclass(frozen=True)
class FileEntry:
    path: Path
    bytes: int | None  # None: missing
    sha256: str | None


@dataclass(frozen=True)
class PreparedEntry:
    path: Path
    version: int
    split_seed: int
    bytes: int  # on disk, every file of the folder
    sizes: dict[str, int] | None  # train / val / test; None when unreadable
    norm_mean: float | None
    norm_std: float | None
    problem: str | None  # None: intact and current


@dataclass(frozen=True)
class DatasetEntry:
    info: DatasetInfo
    files: list[FileEntry]
    prepared: list[PreparedEntry]


def _prepared_entries(root: Path, info: DatasetInfo) -> list[tuple[PreparedEntry, Any]]:
    """Each prepared folder of the dataset, with its meta when intact."""
    found = []
    folder = root / FOLDER
    for path in sorted(folder.glob(f"{info.name}-v*-split*")) if folder.is_dir() else []:
        match = _PREPARED_NAME.match(path.name)
        if not path.is_dir() or not match or match["name"] != info.name:
            continue
        version, seed = int(match["version"]), int(match["seed"])
        meta = None
        problem: str | None
        try:
            meta = verify(path, replace(info, version=version), seed)
            problem = None
            if version != info.version:
                problem = f"outdated: version {version}, the code now makes {info.version}"
        except DamagedCopy as exc:
            problem = f"damaged: {exc}"
            try:  # sizes and statistics may still be readable, for the listing
                meta = read_meta(path)
            except DamagedCopy:
                meta = None
        size = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
        entry = PreparedEntry(
            path=path,
            version=version,
            split_seed=seed,
            bytes=size,
            sizes=meta.get("sizes") if meta else None,
            norm_mean=meta.get("norm_mean") if meta else None,
            norm_std=meta.get("norm_std") if meta else None,
            problem=problem,
        )
        found.append((entry, meta if problem is None or problem.startswith("outdated") else None))
    return found


def inventory(root: Path) -> list[DatasetEntry]:
    entries = []
    for info in DATASETS.values():
        prepared = _prepared_entries(root, info)
        recorded: dict[str, dict[str, Any]] = {}
        for _, meta in prepared:
            for source in (meta or {}).get("sources", []):
                recorded[str(source["file"])] = source
        files = []
        for path in reader(info).expected_files(info.name, root):
            if not path.is_file():
                files.append(FileEntry(path=path, bytes=None, sha256=None))
                continue
            stat = path.stat()
            known = recorded.get(str(path.relative_to(root)))
            if known and (known["bytes"], known["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns):
                sha256 = str(known["sha256"])
            else:
                sha256 = digest(path)
            files.append(FileEntry(path=path, bytes=stat.st_size, sha256=sha256))
        entries.append(DatasetEntry(info=info, files=files, prepared=[e for e, _ in prepared]))
    return entries
