"""Where datasets live on disk, and whether they may be downloaded."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ROOT_ENV = "CPUSWEEP_DATA_ROOT"
OFFLINE_ENV = "CPUSWEEP_OFFLINE"


def default_data_root() -> Path:
    """The data root when none is given: $CPUSWEEP_DATA_ROOT, else a user cache folder."""
    if os.environ.get(DATA_ROOT_ENV):
        return Path(os.environ[DATA_ROOT_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "cpusweep" / "data"


def resolve_data_root(explicit: str | os.PathLike[str] | None) -> Path:
    return Path(explicit).expanduser() if explicit else default_data_root()


def downloads_allowed() -> bool:
    """Set CPUSWEEP_OFFLINE=1 to forbid any download attempt."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("1", "true", "yes")
