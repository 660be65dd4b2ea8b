"""The approximation-error probe against Theorem 2 (paper §7): the probe's points, the fitted c,
and their tables (pure pandas / numpy)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from runner.report.configs import PROBE_PREFIX, _ordered_labels, group_name
from runner.report.tables import GridTable, Stat

# --- the approximation-error probe and Theorem 2 --------------------------------------------------


@dataclass(frozen=True)
class Theorem2Fit:
    """Least-squares fit of Theorem 2's model to measured relative errors.

    Under the theorem's assumption (active inputs carry c times the weighted sum of the
    inactive ones, linear activations), the estimate after k layers is the exact activation
    times (c/(c+1))^k, so the error relative to the estimate is ((c+1)/c)^k - 1 (the
    theorem's form) and the error relative to the exact activation, which the probe measures
    as ||a_approx - a|| / ||a||, is 1 - (c/(c+1))^k. `c` minimises the sum of squared
    differences between the measured errors and 1 - (c/(c+1))^k.
    """

    c: float
    rms: float  # root mean square residual of the fit, in the probe's units
    points: int

    def probe_curve(self, k: np.ndarray) -> np.ndarray:
        q = self.c / (self.c + 1.0)
        return 1.0 - q ** np.asarray(k, dtype=float)

    def theorem_curve(self, k: np.ndarray) -> np.ndarray:
        return ((self.c + 1.0) / self.c) ** np.asarray(k, dtype=float) - 1.0


def fit_theorem2(k: np.ndarray, error: np.ndarray) -> Theorem2Fit | None:
    """Fit c to points (k, measured relative error); None without points, or when the points
    do not have the theorem's shape: the best c at the edge of its range (0.00025 .. 4000),
    e.g. errors at or above 1 (c -> 0) or all zero (c -> infinity)."""
    k = np.asarray(k, dtype=float)
    error = np.asarray(error, dtype=float)
    good = np.isfinite(k) & np.isfinite(error)
    k, error = k[good], error[good]
    if len(k) == 0:
        return None

    def loss(q: float) -> float:
        return float(np.sum((error - (1.0 - q**k)) ** 2))

    # A coarse scan of q = c/(c+1) in (0, 1), then golden-section refinement around the best.
    steps = 4000
    grid = np.arange(1, steps) / steps
    losses = [loss(q) for q in grid]
    best = int(np.argmin(losses))
    if best in (0, len(grid) - 1):
        return None
    lo, hi = grid[best - 1], grid[best + 1]
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    while b - a > 1e-13:
        x1, x2 = b - ratio * (b - a), a + ratio * (b - a)
        if loss(x1) <= loss(x2):
            b = x2
        else:
            a = x1
    q = (a + b) / 2.0
    return Theorem2Fit(c=q / (1.0 - q), rms=math.sqrt(loss(q) / len(k)), points=len(k))


def probe_points(cells: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    """The probe at each cell's final epoch, one row per (cell, hidden layer): `layer`, and
    `error` = ||a_approx - a|| / ||a|| of that layer on the fixed validation batch;
    `last` marks the cell's last hidden layer (layer == depth)."""
    columns = [
        "cell_key",
        "config",
        "label",
        "dataset",
        "arch",
        "method",
        "depth",
        "batch_size",
        "seed",
    ]
    probe_columns = [c for c in epochs.columns if c.startswith(PROBE_PREFIX)]
    empty = pd.DataFrame(columns=[*columns, "layer", "error", "last"])
    if cells.empty or not probe_columns:
        return empty
    final = epochs.sort_values("epoch").groupby("cell_key").tail(1)
    long = final.melt(
        id_vars=["cell_key"], value_vars=probe_columns, var_name="stat", value_name="error"
    )
    long = long.dropna(subset=["error"])
    if long.empty:
        return empty
    long["layer"] = long["stat"].str.slice(len(PROBE_PREFIX)).astype(int)
    points = long.drop(columns="stat").merge(cells[columns], on="cell_key", how="inner")
    points["last"] = points["layer"] == points["depth"]
    return points.sort_values(["dataset", "arch", "label", "depth", "seed", "layer"]).reset_index(
        drop=True
    )


# Theorem 2 models an approximate forward pass that drops the inactive units' share of each
# weighted sum (no rescaling), so its estimate falls short by a fixed ratio per layer: that is
# ALSH-APPROX. Dropout, standout and MC's forward mode rescale or sample instead; their probe
# error is a noise level (often above 1), not a shortfall, and gets no fitted c.
THEOREM2_METHODS = ("alsh_approx",)


def probe_fits(points: pd.DataFrame) -> pd.DataFrame:
    """Theorem 2's c per dataset, architecture and method label (for the methods the theorem
    models, `THEOREM2_METHODS`), fitted to the final-epoch error of every cell's last hidden
    layer (k = depth; each seed one point)."""
    rows = []
    last = points[points["last"]] if not points.empty else points
    if not last.empty:
        last = last[last["method"].isin(THEOREM2_METHODS)]
    for (dataset, arch, label), group in last.groupby(["dataset", "arch", "label"], sort=True):
        fit = fit_theorem2(group["depth"].to_numpy(), group["error"].to_numpy())
        if fit is None:
            continue
        rows.append(
            {
                "dataset": dataset,
                "arch": arch,
                "label": label,
                "c": fit.c,
                "rms": fit.rms,
                "points": fit.points,
                "depths": ",".join(str(d) for d in sorted(group["depth"].unique())),
            }
        )
    return pd.DataFrame(rows, columns=["dataset", "arch", "label", "c", "rms", "points", "depths"])


def probe_tables(points: pd.DataFrame, fits: pd.DataFrame) -> list[GridTable]:
    """Measured error of the last hidden layer per depth, and the fitted c, per method."""
    tables: list[GridTable] = []
    if points.empty:
        return tables
    last = points[points["last"]]
    for (dataset, arch), group in last.groupby(["dataset", "arch"], sort=True):
        depths = sorted(group["depth"].unique())
        values: dict[tuple[str, str], Stat] = {}
        for (label, depth), cell_group in group.groupby(["label", "depth"]):
            errors = cell_group["error"].astype(float)
            values[(label, str(depth))] = Stat(
                float(errors.mean()),
                float(errors.std(ddof=1)) if len(errors) > 1 else math.nan,
                len(errors),
            )
        here = fits[(fits["dataset"] == dataset) & (fits["arch"] == arch)]
        for _, fit in here.iterrows():
            values[(fit["label"], "fitted c")] = Stat(float(fit["c"]))
            values[(fit["label"], "fit rms")] = Stat(float(fit["rms"]))
        tables.append(
            GridTable(
                title=f"Approximation error of the last hidden layer by depth, "
                f"{group_name(dataset, arch)} (Theorem 2)",
                row_header="method",
                rows=_ordered_labels(group.drop_duplicates("label")),
                columns=[str(d) for d in depths] + ["fitted c", "fit rms"],
                values=values,
                fmt=".3g",
                note="||a_approx - a|| / ||a|| on the fixed validation probe batch, final "
                "epoch; c fitted by least squares of 1 - (c/(c+1))^k with k = depth, for "
                "ALSH-APPROX only (the theorem's model: units dropped without rescaling)",
            )
        )
    return tables
