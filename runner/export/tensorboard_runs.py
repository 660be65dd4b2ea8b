"""The TensorBoard export: event files per cell and an hparams summary (see
runner/export/collect.py)."""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

from runner.errors import ResultsError
from runner.export.collect import (
    _TB_ROOT_SUFFIX,
    TENSORBOARD_TABLE_METRICS,
    CellExport,
    ExportSummary,
    collect,
    require_tensorboard,
)

# --- TensorBoard ---------------------------------------------------------------------------------


def _tb_run_dir(cell: CellExport) -> Path:
    """A cell's run folder, from the cell alone (so it never moves when more cells finish):
    <dataset>/<paper's method name>/d<depth>_s<seed>_<key>."""
    from runner.report.configs import slug

    depth, seed = cell.params.get("depth"), cell.params.get("seed")
    return (
        Path(slug(cell.group))
        / slug(cell.tags["cpusweep.paper_label"])
        / (f"d{depth}_s{seed}_{cell.key}")
    )


def _hparam_kinds(cells: list[CellExport]) -> dict[str, type]:
    """Each parameter's type in the hparams table: bool, float (every number) or str (mixed
    values are shown as text)."""
    kinds: dict[str, type] = {}
    seen: dict[str, set[type]] = {}
    for cell in cells:
        for name, value in cell.params.items():
            if value is not None:
                seen.setdefault(name, set()).add(type(value))
    for name, types in seen.items():
        if types == {bool}:
            kinds[name] = bool
        elif types <= {int, float}:
            kinds[name] = float
        else:
            kinds[name] = str
    return kinds


def _hparam_values(cell: CellExport, kinds: dict[str, type]) -> dict[str, Any]:
    return {
        name: kinds[name](value)
        for name, value in cell.params.items()
        if value is not None and name in kinds
    }


class _EventFile:
    """One TensorBoard event file (scalars as the `tensorboard.summary` writer writes them,
    plus raw summaries for the hparams plugin)."""

    def __init__(self, folder: Path, suffix: str = "") -> None:
        writer_module = importlib.import_module("tensorboard.summary.writer.event_file_writer")
        self.event_pb2 = importlib.import_module("tensorboard.compat.proto.event_pb2")
        self.summary_pb2 = importlib.import_module("tensorboard.compat.proto.summary_pb2")
        self.tensor_util = importlib.import_module("tensorboard.util.tensor_util")
        self.numpy = importlib.import_module("numpy")
        self.writer = writer_module.EventFileWriter(str(folder), filename_suffix=suffix)

    def scalar(self, tag: str, value: float, step: int, wall_time: float) -> None:
        metadata = self.summary_pb2.SummaryMetadata(
            plugin_data=self.summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
            data_class=self.summary_pb2.DataClass.DATA_CLASS_SCALAR,
        )
        event = self.event_pb2.Event(wall_time=wall_time, step=step)
        event.summary.value.add(
            tag=tag,
            tensor=self.tensor_util.make_tensor_proto(self.numpy.float32(value)),
            metadata=metadata,
        )
        self.writer.add_event(event)

    def summary(self, summary: Any, wall_time: float) -> None:
        self.writer.add_event(self.event_pb2.Event(wall_time=wall_time, step=0, summary=summary))

    def close(self) -> None:
        self.writer.close()


def _tb_tag(name: str) -> str:
    """epochs.parquet's column names as TensorBoard tags, grouped: `epoch/val_accuracy`,
    `stat/probe_rel_error.layer2`."""
    if name.startswith("stat."):
        return "stat/" + name[len("stat.") :]
    return "epoch/" + name


def _write_tb_cell(folder: Path, cell: CellExport, kinds: dict[str, type]) -> None:
    hp = importlib.import_module("tensorboard.plugins.hparams.summary_v2")
    wall = (cell.finished_ms or time.time() * 1000) / 1000
    events = _EventFile(folder)
    try:
        start = (cell.started_ms or cell.finished_ms or time.time() * 1000) / 1000
        events.summary(
            hp.hparams_pb(_hparam_values(cell, kinds), trial_id=cell.key, start_time_secs=start),
            start,
        )
        for epoch, values in cell.epochs:
            for name, value in values.items():
                events.scalar(_tb_tag(name), value, epoch, wall)
        step = cell.epochs_done or (cell.epochs[-1][0] if cell.epochs else 0)
        for name, value in cell.final.items():
            events.scalar(f"final/{name}", value, step, wall)
    finally:
        events.close()


def _write_tb_experiment(out: Path, cells: list[CellExport], kinds: dict[str, type]) -> None:
    """The hparams plugin's experiment summary at the top of the log folder: every parameter
    with the values the cells took, and the metrics of the table. Replaces the previous one."""
    hp = importlib.import_module("tensorboard.plugins.hparams.summary_v2")
    previous = [p for p in out.glob(f"events.out.tfevents.*{_TB_ROOT_SUFFIX}") if p.is_file()]
    hparams = []
    for name, kind in sorted(kinds.items()):
        values = {v[name] for v in (_hparam_values(c, kinds) for c in cells) if name in v}
        hparams.append(hp.HParam(name, hp.Discrete(sorted(values), dtype=kind)))
    tags = {_tb_tag(n) for c in cells for _, values in c.epochs for n in values}
    tags |= {f"final/{n}" for c in cells for n in c.final}
    metrics = [hp.Metric(tag) for tag in TENSORBOARD_TABLE_METRICS if tag in tags]
    events = _EventFile(out, _TB_ROOT_SUFFIX)
    try:
        events.summary(hp.hparams_config_pb(hparams, metrics), time.time())
    finally:
        events.close()
    for path in previous:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def export_tensorboard(
    results_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None
) -> ExportSummary:
    """Export a results folder's finished cells as TensorBoard event files under `out`
    (default DIR/tensorboard): a cell already there is left as it is; the hparams experiment
    summary is rewritten to cover every cell."""
    require_tensorboard()
    sweep = collect(results_dir)
    folder = Path(out) if out is not None else sweep.root / "tensorboard"
    summary = ExportSummary("tensorboard", str(folder), failed_not_exported=len(sweep.failed))
    kinds = _hparam_kinds(sweep.cells)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for cell in sweep.cells:
            target = folder / _tb_run_dir(cell)
            if target.is_dir() and any(target.glob("events.out.tfevents.*")):
                summary.skipped += 1
                continue
            # Written aside, then renamed into place: an interrupted export leaves no half run.
            temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            shutil.rmtree(temporary, ignore_errors=True)
            temporary.mkdir(parents=True)
            try:
                _write_tb_cell(temporary, cell, kinds)
                shutil.rmtree(target, ignore_errors=True)
                os.replace(temporary, target)
            finally:
                shutil.rmtree(temporary, ignore_errors=True)
            summary.created += 1
        if sweep.cells:
            _write_tb_experiment(folder, sweep.cells, kinds)
    except OSError as exc:
        raise ResultsError(
            f"cannot write TensorBoard files to {folder} ({exc.strerror or exc}); pick another "
            "folder with --out DIR"
        ) from None
    if sweep.failed:
        summary.notes.append(
            f"{len(sweep.failed)} failed cell(s) have no scalars and are not in TensorBoard "
            "(`python -m runner status` lists them; the MLflow export has them as FAILED runs)"
        )
    summary.view = f"tensorboard --logdir {folder}"
    return summary
