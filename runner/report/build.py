"""Writing a report: the Parquet files, the figures and the page of a results folder."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa

from runner.errors import ResultsError
from runner.report.analysis import Analysis, analyse
from runner.report.folder import SweepData, epochs_table, load_sweep, write_parquet

if TYPE_CHECKING:
    from runner.report.figures import FigureFile
    from runner.report.published import PublishedNumber


@dataclass
class Report:
    out_dir: Path
    cells_path: Path | None
    epochs_path: Path | None
    page_path: Path | None
    data: SweepData
    analysis: Analysis
    figures: list[FigureFile] = field(default_factory=list)
    comparison: pd.DataFrame | None = None  # with --compare-paper
    unmatched: list[PublishedNumber] = field(default_factory=list)

    # The skeleton's names, kept for callers of the first version.
    @property
    def cells(self) -> pd.DataFrame:
        return self.analysis.cells

    @property
    def summary(self) -> pd.DataFrame:
        return self.analysis.summary

    @property
    def unreadable(self) -> list[Path]:
        return self.data.unreadable


def build_report(
    results_dir: str | Path,
    out_dir: str | Path | None = None,
    compare_paper: bool = False,
    include_stopped: bool = False,
) -> Report:
    """Read a results folder and write the Parquet files, the figures and the page; cells
    that stopped early count in the means only with `include_stopped`."""
    from runner.report import figures
    from runner.report import page as report_page
    from runner.report.published import compare, load_published

    data = load_sweep(results_dir)
    out = Path(out_dir) if out_dir else data.root / "report"
    try:  # before anything is computed: a folder that cannot take the report says so now
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".cpusweep-write-test.{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise ResultsError(
            f"cannot write the report to {out} ({exc.strerror or exc}); write it elsewhere "
            "with --out DIR"
        ) from None
    analysis = analyse(data, include_stopped)
    report = Report(out, None, None, None, data, analysis)
    if data.table is not None:
        flat = data.table.drop_columns(["history"])
        flat = flat.append_column("label", pa.array(list(analysis.cells["label"]), pa.string()))
        report.cells_path, report.epochs_path = out / "cells.parquet", out / "epochs.parquet"
        write_parquet(flat, report.cells_path)
        write_parquet(epochs_table(data.table), report.epochs_path)
        report.figures = figures.render_all(analysis, out / "figures")
    if compare_paper:
        report.comparison, report.unmatched = compare(load_published(), analysis.summary)
    report.page_path = report_page.write_page(report, out / "report.md")
    return report
