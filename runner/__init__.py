"""cpusweep's runner: job files to cells, cells to Ray tasks, results to Parquet.

    import runner
    result = runner.submit(runner.load_job("jobs/quickstart.toml"))
    cells, epochs = runner.load(result.results)

The public surface, re-exported here (lazily, PEP 562: `methods.registry` imports
`runner.job.params`, and importing this package must not pull in the rest of the runner).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_EXPORTS = {
    "Cell": "runner.job.cells",
    "CpusweepError": "runner.errors",
    "DatasetError": "runner.errors",
    "ExecutorError": "runner.errors",
    "ResultsError": "runner.errors",
    "SpecError": "runner.errors",
    "Expansion": "runner.job.grid",
    "expand": "runner.job.grid",
    "JobSpec": "runner.job.spec",
    "load_spec": "runner.job.spec",
    "parse_spec": "runner.job.spec",
    "ResultsStore": "runner.results.store",
    "build_report": "runner.report.build",
    # The Python API (runner/api): what the command line's verbs call.
    **{
        name: "runner.api"
        for name in (
            "load_job",
            "plan",
            "submit",
            "status",
            "load",
            "overview",
            "report",
            "export",
            "verify",
            "Plan",
            "SweepResult",
            "FolderStatus",
            "VerifyReport",
        )
    },
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'runner' has no attribute {name!r}")


class _API(types.ModuleType):
    """`runner.report` and `runner.export` are API functions and also subpackages. Importing
    a subpackage sets it as an attribute of its parent, which would hide the function from
    then on (`runner.report(...)`: "'module' object is not callable"); these two names stay
    the functions. The subpackages are imported by name as always (`from runner.report
    import build`): the import system finds them in sys.modules, not here."""

    @property
    def report(self) -> Any:
        return __getattr__("report")

    @report.setter
    def report(self, value: Any) -> None:
        pass  # the import system setting the subpackage: keep the function

    @property
    def export(self) -> Any:
        return __getattr__("export")

    @export.setter
    def export(self, value: Any) -> None:
        pass


sys.modules[__name__].__class__ = _API
