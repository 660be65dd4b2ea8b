"""cpusweep's runner: job files to cells, cells to Ray tasks, results to Parquet.

The public surface, re-exported here; everything else is internal.
"""

from runner.cells import Cell
from runner.errors import CpusweepError, DatasetError, ExecutorError, ResultsError, SpecError
from runner.grid import Expansion, expand
from runner.spec import JobSpec, load_spec, parse_spec
from runner.store import ResultsStore

__all__ = [
    "Cell",
    "CpusweepError",
    "DatasetError",
    "ExecutorError",
    "Expansion",
    "JobSpec",
    "ResultsError",
    "ResultsStore",
    "SpecError",
    "expand",
    "load_spec",
    "parse_spec",
]
