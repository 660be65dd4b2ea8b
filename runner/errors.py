"""The runner's error hierarchy.

Every error a user can cause carries a message that says what went wrong, where (a file, a
key, a cell), and what to do next. The CLI prints these without a traceback; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Sequence


class CpusweepError(Exception):
    """Base class for errors that are the user's to fix; the CLI prints them plainly."""


class SpecError(CpusweepError):
    """A job file is malformed. Holds every problem found, not just the first."""

    def __init__(self, source: str, problems: Sequence[str]):
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        noun = "problem" if len(self.problems) == 1 else "problems"
        super().__init__(f"{source}: {len(self.problems)} {noun} in the job file:\n{lines}")


class SelectionError(SpecError):
    """`--only` / `--set` (or `only` / `overrides` from Python) ask for what the job cannot
    give. Holds every problem found."""

    def __init__(self, problems: Sequence[str]):
        self.source = "--only/--set"
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        noun = "problem" if len(self.problems) == 1 else "problems"
        CpusweepError.__init__(self, f"--only/--set: {len(self.problems)} {noun}:\n{lines}")


class DatasetError(CpusweepError):
    """A dataset is missing, incomplete or corrupt, and cannot be fetched here."""


class ResultsError(CpusweepError):
    """A results folder cannot be used (not writable, locked by another sweep, corrupt file)."""


class ExecutorError(CpusweepError):
    """The execution backend (Ray) could not be started or reached."""
