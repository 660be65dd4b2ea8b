"""The Python API: what every command-line verb calls. A job (`load_job`, from a TOML file or
a dict) is planned (`plan`) and run (`submit`, with progress as events) into a results
folder, which is then read (`status`, `load`), reported (`report`), exported (`export`)
and checked by re-running its cells (`verify`).

    import runner
    job = runner.load_job("jobs/quickstart.toml")
    result = runner.submit(job, executor="serial")
    cells, epochs = runner.load(result.results)

May import every package below it (job, run, results, report, export, datasets, clusters);
the command line (runner.cli) is its only importer inside the runner. Never prints.
"""

from runner.api.events import (
    CellFailed,
    CellFinished,
    CellStarted,
    Event,
    SweepPlanned,
    SweepStarted,
    SweepWarning,
    Tick,
)
from runner.api.folders import (
    FolderStatus,
    NotLearned,
    Stopped,
    export,
    load,
    overview,
    report,
    status,
)
from runner.api.jobs import Plan, load_job, plan
from runner.api.sweeps import SweepResult, submit
from runner.api.verify import (
    CellCheck,
    CellVerified,
    Difference,
    VerifyEvent,
    VerifyPlanned,
    VerifyReport,
    VerifyStarted,
    verify,
)

__all__ = [
    "CellCheck",
    "CellFailed",
    "CellFinished",
    "CellStarted",
    "CellVerified",
    "Difference",
    "Event",
    "FolderStatus",
    "NotLearned",
    "Plan",
    "Stopped",
    "SweepPlanned",
    "SweepResult",
    "SweepStarted",
    "SweepWarning",
    "Tick",
    "VerifyEvent",
    "VerifyPlanned",
    "VerifyReport",
    "VerifyStarted",
    "export",
    "load",
    "load_job",
    "overview",
    "plan",
    "report",
    "status",
    "submit",
    "verify",
]
