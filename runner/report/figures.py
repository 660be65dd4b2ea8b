"""The report's figures: PNG files drawn with matplotlib's Agg backend (no display needed).

Every figure is drawn from the tables of runner/report/analysis.py for whatever part of the grid the
sweep covers, one file per dataset (and architecture), and only where there is something to
draw (a curve over depth needs two depths). Each method label keeps one colour throughout.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, never a window

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from runner.report.analysis import Analysis, prediction_shares
from runner.report.configs import group_name, slug
from runner.report.theorem2 import Theorem2Fit
from runner.results.store import atomic_write_bytes

DPI = 100
# The paper's illustration of Theorem 2 (§7): c = 5 gives 0.2, 0.44, 0.72, 1.07, 1.48, 1.98.
PAPER_C = 5.0


# Where each kind of figure goes on the page.
SECTIONS = ("depth", "epochs", "confusion", "active", "probe")

Colours = dict[str, tuple[float, ...]]


@dataclass(frozen=True)
class FigureFile:
    section: str  # one of SECTIONS
    path: Path
    title: str
    paper: str  # the paper's figures it corresponds to
    caption: str


def _colours(labels: list[str]) -> Colours:
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


def _panels(
    n: int, width: float = 4.2, height: float = 3.2, sharey: bool = False
) -> tuple[Figure, list[Axes]]:
    """n panels; `sharey` for quantities read side by side across panels (accuracy)."""
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(width * cols, height * rows),
        squeeze=False,
        sharey=sharey,
        layout="constrained",
    )
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _save(fig: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _band(ax: Axes, x: np.ndarray, mean: np.ndarray, std: np.ndarray, colour: object) -> None:
    if np.isfinite(std).any():
        ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)


def _legend(fig: Figure, axes: list[Axes]) -> None:
    handles, labels = [], []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=8)


# --- figures ------------------------------------------------------------------------------------


def _depth_figure(summary: pd.DataFrame, title: str, colours: Colours, path: Path) -> bool:
    depths = sorted(summary["depth"].unique())
    if len(depths) < 2:
        return False
    fig, (acc, time) = _panels(2)
    for label, group in summary.groupby("label", sort=False):
        group = group.sort_values("depth")
        for ax, metric, scale in ((acc, "test_accuracy", 100.0), (time, "train_seconds", 1.0)):
            std = group[f"{metric}_std"].to_numpy(dtype=float) * scale
            ax.errorbar(
                group["depth"],
                group[metric] * scale,
                yerr=np.where(np.isfinite(std), std, 0.0),
                marker="o",
                capsize=3,
                color=colours[label],
                label=label,
            )
    acc.set(xlabel="hidden layers", ylabel="test accuracy (%)", title=f"{title}: accuracy")
    time.set(xlabel="hidden layers", ylabel="total training time (s)", title=f"{title}: time")
    for ax in (acc, time):
        ax.set_xticks(depths)
        ax.grid(alpha=0.3)
    _legend(fig, [acc, time])
    _save(fig, path)
    return True


def _epoch_figure(
    curves: pd.DataFrame,
    metric: str,
    ylabel: str,
    scale: float,
    title: str,
    colours: Colours,
    path: Path,
) -> None:
    depths = sorted(curves["depth"].unique())
    # Accuracy panels share their scale, to be compared across depths; cumulative times differ
    # by the depth's cost, and each panel keeps its own.
    fig, axes = _panels(len(depths), sharey=metric == "val_accuracy")
    for ax, depth in zip(axes, depths, strict=True):
        for _config, group in curves[curves["depth"] == depth].groupby("config", sort=False):
            group = group.sort_values("epoch")
            label = group["label"].iloc[0]
            x = group["epoch"].to_numpy(dtype=float)
            mean = group[metric].to_numpy(dtype=float) * scale
            ax.plot(x, mean, marker=".", color=colours[label], label=label)
            _band(ax, x, mean, group[f"{metric}_std"].to_numpy(dtype=float) * scale, colours[label])
        ax.set(xlabel="epoch", ylabel=ylabel, title=f"{title}, {depth} hidden layer(s)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    _legend(fig, axes)
    _save(fig, path)


def _by_depth_figure(curves: pd.DataFrame, title: str, path: Path) -> bool:
    labels = [label for label, g in curves.groupby("label", sort=False) if g["depth"].nunique() > 1]
    if not labels:
        return False
    depths = sorted(curves["depth"].unique())
    cmap = plt.get_cmap("viridis")
    fig, axes = _panels(len(labels), sharey=True)
    for ax, label in zip(axes, labels, strict=True):
        mine = curves[curves["label"] == label]
        for depth, group in mine.groupby("depth", sort=True):
            group = group.sort_values("epoch")
            colour = cmap(depths.index(depth) / max(len(depths) - 1, 1))
            x = group["epoch"].to_numpy(dtype=float)
            mean = group["val_accuracy"].to_numpy(dtype=float) * 100
            ax.plot(x, mean, marker=".", color=colour, label=f"{depth} hidden layer(s)")
            std = group["val_accuracy_std"].to_numpy(dtype=float) * 100
            _band(ax, x, mean, std, colour)
        ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title=f"{label}, {title}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, path)
    return True


def _confusion_figure(
    summary: pd.DataFrame, confusion: dict[str, np.ndarray], title: str, path: Path
) -> bool:
    summary = summary[summary["config"].isin(confusion.keys())]
    if summary.empty:
        return False
    labels = list(dict.fromkeys(summary["label"]))
    depths = sorted(summary["depth"].unique())
    fig, axes = plt.subplots(
        len(labels),
        len(depths),
        figsize=(1.9 * len(depths) + 0.6, 2.0 * len(labels) + 0.4),
        squeeze=False,
        layout="constrained",
    )
    image = None
    for i, label in enumerate(labels):
        for j, depth in enumerate(depths):
            ax = axes[i][j]
            row = summary[(summary["label"] == label) & (summary["depth"] == depth)]
            if row.empty:
                ax.set_axis_off()
                continue
            matrix = confusion[row["config"].iloc[0]]
            # Each row as the share of its true class, on one scale for every panel.
            totals = matrix.sum(axis=1, keepdims=True)
            shares = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
            image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
            classes = range(matrix.shape[0])
            if matrix.shape[0] <= 10:  # the paper's Fig. 4 labels 0..9; 26 would be a smear
                ax.set_xticks(classes, [str(c) for c in classes], fontsize=5)
                ax.set_yticks(classes, [str(c) for c in classes], fontsize=5)
            else:
                ax.set_xticks([])
                ax.set_yticks([])
            accuracy = np.trace(matrix) / max(matrix.sum(), 1)
            ax.set_title(f"d={depth}: {accuracy:.1%}", fontsize=8)
            if j == 0:
                ax.set_ylabel(label, fontsize=7)
    if image is not None:
        # Under the grid, not beside it: the grid is usually tall (methods x depths).
        fig.colorbar(
            image,
            ax=axes,
            location="bottom",
            shrink=0.8,
            aspect=25,
            pad=0.02,
            label="share of the true class",
        )
    fig.suptitle(f"Confusion matrices (true: rows, predicted: columns), {title}", fontsize=10)
    _save(fig, path)
    return True


def _predictions_figure(
    summary: pd.DataFrame, confusion: dict[str, np.ndarray], title: str, path: Path
) -> bool:
    summary = summary[summary["config"].isin(confusion.keys())]
    if summary.empty:
        return False
    labels = list(dict.fromkeys(summary["label"]))
    fig, axes = _panels(len(labels), width=4.6, height=2.8)
    for ax, label in zip(axes, labels, strict=True):
        mine = summary[summary["label"] == label].sort_values("depth")
        shares = [prediction_shares(confusion[c]) for c in mine["config"]]
        width = max(len(s) for s in shares)
        grid = np.full((len(shares), width), np.nan)
        for r, share in enumerate(shares):
            grid[r, : len(share)] = share
        image = ax.imshow(grid, cmap="viridis", vmin=0.0, aspect="auto", interpolation="nearest")
        ax.set_yticks(range(len(mine)), [str(d) for d in mine["depth"]])
        ax.set(xlabel="predicted label", ylabel="hidden layers", title=label)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(f"Share of the test set predicted as each label, {title}", fontsize=10)
    _save(fig, path)
    return True


def _probe_figure(
    points: pd.DataFrame, fits: pd.DataFrame, title: str, colours: Colours, path: Path
) -> bool:
    last = points[points["last"]]
    if last.empty:
        return False
    fig, (measured, theorem) = _panels(2, width=5.0, height=3.8)
    ratios: list[float] = []
    kmax = int(points["layer"].max())
    k = np.linspace(1, max(kmax, 2), 200)
    for label, group in last.groupby("label", sort=False):
        colour = colours[label]
        measured.scatter(group["depth"], group["error"], color=colour, s=12, alpha=0.5)
        means = group.groupby("depth")["error"].agg(["mean", "std"]).reset_index()
        measured.errorbar(
            means["depth"],
            means["mean"],
            yerr=means["std"].fillna(0.0),
            fmt="o",
            capsize=3,
            color=colour,
            label=f"{label} (last layer, final epoch)",
        )
        # Error of every layer inside the deepest network (mean over its seeds).
        deepest = points[(points["label"] == label) & (points["depth"] == group["depth"].max())]
        inside = deepest.groupby("layer")["error"].mean()
        measured.plot(inside.index, inside.to_numpy(), color=colour, alpha=0.4, linewidth=1)
        row = fits[fits["label"] == label]
        if not row.empty:
            fit = Theorem2Fit(
                float(row["c"].iloc[0]), float(row["rms"].iloc[0]), int(row["points"].iloc[0])
            )
            measured.plot(
                k, fit.probe_curve(k), "--", color=colour, label=f"1-(c/(c+1))^k, c={fit.c:.3g}"
            )
            theorem.plot(
                k, fit.theorem_curve(k), "--", color=colour, label=f"((c+1)/c)^k-1, c={fit.c:.3g}"
            )
            ratio = means["mean"] / (1.0 - means["mean"])
            usable = means["mean"] < 1.0
            theorem.plot(
                means["depth"][usable], ratio[usable], "o", color=colour, label=f"{label}: e/(1-e)"
            )
            ratios.extend(ratio[usable].tolist())
    paper = Theorem2Fit(c=PAPER_C, rms=0.0, points=0)
    theorem.plot(k, paper.theorem_curve(k), ":", color="grey", label="paper §7 example, c=5")
    # Log scale, bounded by what was measured: a small fitted c explodes the curve.
    paper_max = float(paper.theorem_curve(k).max())
    theorem.set_yscale("log")
    theorem.set_ylim(1e-2, 3 * max([paper_max, *ratios]))
    measured.set_yscale("log")  # dropout's noise (often > 1) and ALSH's shortfall (< 1) together
    measured.set(
        xlabel="hidden layers k",
        ylabel="||a_approx - a|| / ||a||",
        title=f"Measured probe error, {title}",
    )
    theorem.set(
        xlabel="hidden layers k",
        ylabel="error / estimate",
        title="Theorem 2's form ((c+1)/c)^k - 1 (ALSH-APPROX)",
    )
    for ax in (measured, theorem):
        ax.set_xticks(range(1, max(kmax, 2) + 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, path)
    return True


def _active_sets_figure(frame: pd.DataFrame, title: str, path: Path) -> bool:
    """Per ALSH-APPROX label: active-set overlap and share of units ever active, per hidden
    layer, one line per depth."""
    labels = list(dict.fromkeys(frame["label"]))
    if frame.empty or not labels or not np.isfinite(frame[["overlap", "ever"]].to_numpy()).any():
        return False
    fig, axes = _panels(2 * len(labels), width=4.6, height=3.2)
    depths = sorted(frame["depth"].unique())
    cmap = plt.get_cmap("viridis")
    for i, label in enumerate(labels):
        overlap_ax, ever_ax = axes[2 * i], axes[2 * i + 1]
        mine = frame[frame["label"] == label]
        for j, depth in enumerate(depths):
            rows = mine[mine["depth"] == depth].sort_values("layer")
            if rows.empty:
                continue
            colour = cmap(j / max(len(depths) - 1, 1))
            overlap_ax.plot(
                rows["layer"], rows["overlap"], "o-", color=colour, label=f"depth {depth}"
            )
            ever_ax.plot(
                rows["layer"], 100 * rows["ever"], "o-", color=colour, label=f"depth {depth}"
            )
        random = float(mine["random"].mean())
        if math.isfinite(random):
            overlap_ax.axhline(random, color="grey", linestyle=":", label="random sets")
        overlap_ax.set(
            xlabel="hidden layer",
            ylabel="mean pairwise Jaccard",
            ylim=(0, 1.02),
            title=f"{label}: active-set overlap",
        )
        ever_ax.set(
            xlabel="hidden layer",
            ylabel="% of units",
            ylim=(0, 102),
            title=f"{label}: units ever active (last epoch)",
        )
        for ax in (overlap_ax, ever_ax):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
    _legend(fig, axes)
    fig.suptitle(f"ALSH-APPROX's active sets per layer, {title}", fontsize=10)
    _save(fig, path)
    return True


# --- all of them ---------------------------------------------------------------------------------


def render_all(analysis: Analysis, out_dir: Path) -> list[FigureFile]:
    """Draw every figure the sweep supports; return what was written, in page order."""
    summary = analysis.summary
    if summary.empty:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    colours = _colours(list(dict.fromkeys(summary["label"])))
    written: list[FigureFile] = []
    for (dataset, arch), group in summary.groupby(["dataset", "arch"], sort=True):
        name, stem = group_name(dataset, arch), slug(group_name(dataset, arch))
        curves = analysis.curves[
            (analysis.curves["dataset"] == dataset) & (analysis.curves["arch"] == arch)
        ]
        path = out_dir / f"depth_{stem}.png"
        if _depth_figure(group, name, colours, path):
            written.append(
                FigureFile(
                    "depth",
                    path,
                    f"Accuracy and training time vs depth, {name}",
                    "Figs. 9, 10",
                    "Test accuracy and total training time per number of hidden layers; "
                    "error bars: std over seeds.",
                )
            )
        if not curves.empty:
            path = out_dir / f"val_accuracy_{stem}.png"
            _epoch_figure(
                curves, "val_accuracy", "validation accuracy (%)", 100.0, name, colours, path
            )
            written.append(
                FigureFile(
                    "epochs",
                    path,
                    f"Validation accuracy per epoch, {name}",
                    "Figs. 7, 8, 14",
                    "One panel per depth, one line per method and batch setting; band: std "
                    "over seeds.",
                )
            )
            path = out_dir / f"cumulative_time_{stem}.png"
            _epoch_figure(
                curves,
                "cumulative_train_seconds",
                "cumulative training time (s)",
                1.0,
                name,
                colours,
                path,
            )
            written.append(
                FigureFile(
                    "epochs",
                    path,
                    f"Cumulative training time per epoch, {name}",
                    "Figs. 11, 12, 13",
                    "Training time only (evaluation excluded); one panel per depth.",
                )
            )
            path = out_dir / f"val_accuracy_by_depth_{stem}.png"
            if _by_depth_figure(curves, name, path):
                written.append(
                    FigureFile(
                        "epochs",
                        path,
                        f"Validation accuracy per epoch by depth, {name}",
                        "Figs. 5, 6",
                        "One panel per method and batch setting, one line per depth.",
                    )
                )
        path = out_dir / f"confusion_{stem}.png"
        if _confusion_figure(group, analysis.confusion, name, path):
            written.append(
                FigureFile(
                    "confusion",
                    path,
                    f"Confusion matrices, method x depth, {name}",
                    "Fig. 4",
                    "Test set, counts summed over seeds; title: accuracy.",
                )
            )
        path = out_dir / f"predictions_{stem}.png"
        if _predictions_figure(group, analysis.confusion, name, path):
            written.append(
                FigureFile(
                    "confusion",
                    path,
                    f"Predicted-label distribution vs depth, {name}",
                    "Fig. 15",
                    "Share of the test set predicted as each label (confusion-matrix column "
                    "sums over the total), per depth.",
                )
            )
        active = analysis.active_sets
        if not active.empty:
            active = active[(active["dataset"] == dataset) & (active["arch"] == arch)]
        path = out_dir / f"active_sets_{stem}.png"
        if not active.empty and _active_sets_figure(active, name, path):
            written.append(
                FigureFile(
                    "active",
                    path,
                    f"ALSH-APPROX's active sets per layer, {name}",
                    "beside Fig. 15 (not measured in the paper)",
                    "Left: mean pairwise Jaccard overlap of the probe batch's active sets per "
                    "hidden layer at the final epoch, one line per depth (dotted: random sets "
                    "of the same size; 1: every input picks the same units). Right: share of "
                    "each layer's units active for some training example in the last epoch.",
                )
            )
        points = analysis.probe[
            (analysis.probe["dataset"] == dataset) & (analysis.probe["arch"] == arch)
        ]
        fits = analysis.fits[
            (analysis.fits["dataset"] == dataset) & (analysis.fits["arch"] == arch)
        ]
        path = out_dir / f"probe_{stem}.png"
        if not points.empty and _probe_figure(points, fits, name, colours, path):
            written.append(
                FigureFile(
                    "probe",
                    path,
                    f"Approximation error vs depth against Theorem 2, {name}",
                    "§7 (not measured in the paper)",
                    "Left: ||a_approx - a|| / ||a|| of each cell's last hidden layer on the "
                    "fixed validation probe batch at the final epoch (dots: cells; markers: "
                    "mean ± std per depth; thin line: every layer of the deepest network), "
                    "and the fitted 1 - (c/(c+1))^k. Right: the same as error relative to "
                    "the estimate, e/(1-e), against Theorem 2's ((c+1)/c)^k - 1 for the "
                    "fitted c, and the paper's c = 5 example.",
                )
            )
    return written
