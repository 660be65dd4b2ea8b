"""Mid-cell checkpoints: a running cell's whole training state, saved every few epochs into
the results folder, so that a cell interrupted anywhere (a killed worker, a lost node, Ctrl-C)
continues from its last checkpoint, on any node, and ends bit-identical to an uninterrupted run.

    DIR/checkpoints/<key>.pt        one per running cell, written only by the cell it belongs to
    DIR/checkpoints/.sweep-token    written by the driver: proves a worker sees the same folder

A checkpoint holds tensors and plain lists and dicts of numbers and strings only, and is read
with `torch.load(weights_only=True)`, after the CRC of each of its records is checked: loading
one never runs code, and a damaged one is never used. It names the cell it
belongs to (the cell's full identity, the format, the torch version); one that does not match,
or cannot be read, is reported and ignored, and the cell starts from scratch. Files are written
atomically (temporary name, fsync, rename), so a crash mid-write leaves the previous checkpoint.

The driver deletes a cell's checkpoint once the cell's result is stored (or the cell failed with
an application error, see runner/run/sweep.py). On a cluster, the results folder must be on storage
that every node mounts at the same path; a worker that does not see the driver's token fails the
cell with a message saying so, rather than training for hours without any checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import ResultsError
from runner.results.store import TEMP_SUFFIX, atomic_write

if TYPE_CHECKING:
    from runner.job.cells import Cell
    from runner.run.trainer import LoopState

log = logging.getLogger("cpusweep")

FORMAT_VERSION = 1
CHECKPOINTS_DIR = "checkpoints"
TOKEN_FILE = ".sweep-token"


class StorageNotShared(ResultsError):
    """A worker cannot see the results folder the driver writes to (no shared storage)."""


@dataclass(frozen=True)
class CheckpointPolicy:
    """What a cell needs to know about checkpoints; travels with every task."""

    directory: str  # absolute path of DIR/checkpoints: the same on every node
    every: int  # epochs between checkpoints (>= 1)
    token: str  # the content of DIR/checkpoints/.sweep-token, written by this sweep's driver


def checkpoints_dir(results_root: str | os.PathLike[str]) -> Path:
    return Path(results_root) / CHECKPOINTS_DIR


def checkpoint_path(results_root: str | os.PathLike[str], key: str) -> Path:
    return checkpoints_dir(results_root) / f"{key}.pt"


def prepare_checkpoints(
    results_root: str | os.PathLike[str], every: int
) -> CheckpointPolicy | None:
    """Create DIR/checkpoints and this sweep's token (driver side). None when `every` is 0."""
    if every <= 0:
        return None
    directory = checkpoints_dir(results_root).resolve()
    token = secrets.token_hex(16)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / TOKEN_FILE, lambda f: f.write(token.encode()))
    except OSError as exc:
        raise ResultsError(
            f"cannot write checkpoints to {directory}: {exc}. Fix its permissions, pick another "
            "--results, or set [resources] checkpoint_every = 0"
        ) from None
    return CheckpointPolicy(directory=str(directory), every=every, token=token)


def discard_checkpoint(results_root: str | os.PathLike[str], key: str) -> bool:
    """Delete a cell's checkpoint (driver side). True if there was one."""
    path = checkpoint_path(results_root, key)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:  # the result is safe already; a stale checkpoint only costs disk
        log.warning("could not delete the checkpoint %s: %s", path, exc)
        return False
    return True


@dataclass
class Resumed:
    """A checkpoint that was accepted: where to continue from."""

    state: LoopState
    resumes: int  # times this cell has continued from a checkpoint, this time included


class CellCheckpoints:
    """The checkpoint of one running cell (worker side): check the storage, load, save.

    What the user should hear about (a resume, an unreadable or foreign checkpoint, a failed
    save) is appended to `warnings`, which travel back to the driver with the result."""

    def __init__(self, policy: CheckpointPolicy, cell: Cell, node: str, warnings: list[str]):
        self.policy = policy
        self.cell = cell
        self.node = node
        self.warnings = warnings
        self.directory = Path(policy.directory)
        self.path = self.directory / f"{cell.key}.pt"
        self.resumes = 0  # carried into every checkpoint this run writes
        self.save_seconds = 0.0
        self._save_failed = False

    def _warn(self, message: str) -> None:
        # The driver shows it as a warning when the result arrives (the serial executor runs
        # in the driver: a warning here too would show it twice).
        log.info("%s: %s", self.cell.label(), message)
        self.warnings.append(message)

    def identity(self) -> dict[str, Any]:
        import torch

        return {
            "format": FORMAT_VERSION,
            "cell_key": self.cell.key,
            "cell": self.cell.identity(),
            "torch_version": str(torch.__version__),  # a str subclass would not load
        }

    def check_storage(self) -> None:
        """Raise StorageNotShared unless this node sees the driver's checkpoints folder."""
        token_path = self.directory / TOKEN_FILE
        try:
            seen = token_path.read_text(encoding="utf-8").strip()
        except OSError:
            seen = None
        if seen != self.policy.token:
            what = "does not exist" if seen is None else "belongs to another submit"
            raise StorageNotShared(
                f"node {self.node} does not see the results folder the driver writes to "
                f"({token_path} {what} here). Mid-cell checkpoints need the results folder "
                "on storage that every node mounts at the same path (the compose file's "
                "/shared volume does this; see docs/clusters.md). Fix the mount, or set "
                "[resources] checkpoint_every = 0 to run without checkpoints; then re-run with "
                "--retry-failed."
            )
        # A temporary file of this cell's own is left over from a crash mid-write.
        for stale in self.directory.glob(f".{self.path.name}.*{TEMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                stale.unlink()

    def load(self) -> Resumed | None:
        """The cell's checkpoint if there is one that matches it exactly, else None."""
        import torch

        if not self.path.exists():
            return None
        damage = _damage(self.path)
        if damage:
            self._warn(
                f"ignored the unreadable checkpoint {self.path} ({damage}); the cell starts "
                "from scratch"
            )
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # any reason at all: an unreadable file is never trusted
            self._warn(
                f"ignored the unreadable checkpoint {self.path} ({type(exc).__name__}: "
                f"{_gist(exc)}); the cell starts from scratch"
            )
            return None
        problem = self._problem(saved)
        if problem:
            self._warn(
                f"ignored the checkpoint {self.path}: {problem}; the cell starts from scratch"
            )
            return None
        from runner.run.trainer import LoopState

        state = LoopState(**{name: saved[name] for name in _STATE_FIELDS})
        self.resumes = int(saved["resumes"]) + 1
        self._warn(
            f"resumed from its checkpoint after epoch {state.epoch} (written by node "
            f"{saved['node']}; resume {self.resumes})"
        )
        return Resumed(state=state, resumes=self.resumes)

    def _problem(self, saved: Any) -> str | None:
        if not isinstance(saved, dict):
            return "not a checkpoint of this program"
        missing = [k for k in (*_STATE_FIELDS, "identity", "resumes", "node") if k not in saved]
        if missing:
            return f"it lacks {', '.join(missing)}"
        identity = self.identity()
        if saved["identity"] != identity:
            theirs = saved["identity"] if isinstance(saved["identity"], dict) else {}
            differs = sorted(k for k in identity if theirs.get(k) != identity[k]) or ["identity"]
            return f"it belongs to another cell or code version (differs in: {', '.join(differs)})"
        epochs = int(self.cell.values["epochs"])
        epoch = saved["epoch"]
        if not isinstance(epoch, int) or not 1 <= epoch < epochs:
            return f"its epoch {epoch!r} is outside 1..{epochs - 1}"
        if not isinstance(saved["history"], list) or len(saved["history"]) != epoch:
            return "its history does not match its epoch"
        return None

    def save(self, state: LoopState) -> None:
        """Write the state atomically. A failure is reported, not fatal: training goes on."""
        import torch

        content = {
            "identity": self.identity(),
            **{name: getattr(state, name) for name in _STATE_FIELDS},
            "resumes": self.resumes,
            "node": self.node,
            "pid": os.getpid(),
            "saved_at": time.time(),
        }
        t0 = time.perf_counter()
        try:
            atomic_write(self.path, lambda f: torch.save(content, f))
        except OSError as exc:
            if not self._save_failed:  # once per cell is enough to act on
                self._warn(f"could not write its checkpoint {self.path} ({exc}); training goes on")
            self._save_failed = True
        self.save_seconds += time.perf_counter() - t0


def _damage(path: Path) -> str | None:
    """What is wrong with a checkpoint's bytes, or None. torch.save writes a zip archive with
    a CRC-32 per record, but torch.load does not check them: a damaged tensor would load
    silently and the cell would continue from wrong weights. So every record is checked."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as exc:  # not a zip at all, truncated, unreadable
        return f"not a whole checkpoint file: {type(exc).__name__}: {exc}"
    if bad is not None:
        return f"damaged: its record {bad} fails its CRC check"
    return None


def _gist(exc: BaseException) -> str:
    """The telling line of an error (torch.load's weights-only refusal is a page long)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    telling = [line for line in lines if "Unsupported global" in line]
    return (telling or lines or [""])[0][:300]


_STATE_FIELDS = (
    "epoch",
    "step",
    "examples_seen",
    "history",
    "model",
    "optimizer",
    "shuffle_rng",
    "global_rng",
)
