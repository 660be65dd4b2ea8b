"""The report page: one Markdown file that puts the tables and figures of a sweep together with
its provenance (job file, code versions, CPU model, observed threads, nodes, what is done,
failed and missing). Figures are linked relatively (`figures/<name>.png`), so the report
folder can be moved or archived as a whole.
"""

from __future__ import annotations

import math
import time
import tomllib
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from runner.report.configs import group_name, not_learned_cells, stop_reasons, summary_flag
from runner.report.tables import GridTable, Stat, format_stat
from runner.results.code_versions import mix_lines
from runner.results.failures import FAILURE_HINTS, class_counts
from runner.results.learning import ALPHA, CHANCE, DIVERGED, describe, flag_text
from runner.results.stops import COMPLETED, REASONS, stop_text
from runner.results.store import atomic_write_bytes

if TYPE_CHECKING:
    from runner.report.build import Report
    from runner.report.figures import FigureFile

_MAX_LISTED = 500  # missing / failed cells listed on the page; the rest are counted


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |"]
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def grid_markdown(table: GridTable) -> list[str]:
    """The table, with the number of seeds said once, and beside the values where it differs."""
    counts = Counter(s.n for s in table.values.values() if s.n > 0)
    usual = counts.most_common(1)[0][0] if counts else 1

    def show(stat: Stat | None) -> str:
        text = format_stat(stat, table.fmt)
        if stat is not None and stat.n > 0 and stat.n != usual:
            text += f" (n={stat.n})"
        return text

    lines = [f"**{table.title}**", ""]
    rows = [[r] + [show(table.get(r, c)) for c in table.columns] for r in table.rows]
    lines += markdown_table([table.row_header, *table.columns], rows)
    seeds = f"{usual} seed{'s' if usual != 1 else ''} per value unless marked (n=...)"
    lines += [f"*{table.note + '; ' if table.note else ''}{seeds}.*", ""]
    return lines


def _figures(figures: list[FigureFile], section: str, out_dir: Path) -> list[str]:
    lines = []
    for figure in figures:
        if figure.section != section:
            continue
        relative = figure.path.relative_to(out_dir).as_posix()
        lines += [
            f"**{figure.title}** (paper: {figure.paper})",
            "",
            f"![{figure.title}]({relative})",
            "",
            f"*{figure.caption}*",
            "",
        ]
    return lines


def _job_name(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        name = tomllib.loads(text).get("name")
    except tomllib.TOMLDecodeError:
        return None
    return str(name) if name else None


def _number(value: float, fmt: str) -> str:
    return "-" if value != value else format(value, fmt)  # NaN


def comparison_markdown(comparison: pd.DataFrame, unmatched: int) -> list[str]:
    lines = [
        "Published numbers (runner/report/paper_numbers.csv, with their sources) beside ours for "
        "the same dataset, method, batch size and depth, in the unit of the column "
        "*compared as*. Accuracy in percent, difference = ours - published (percentage "
        "points). Times: the paper's seconds per epoch are epochs over its whole training "
        "set (Table 2: e.g. 55000 MNIST examples), so ours are put on that epoch, seconds "
        "per training example x the paper's training-set size, before the difference "
        "(ours - published) and the ratio (ours / published) are taken; *ours as measured* "
        "is seconds per epoch of our own training set. That scaling takes time to grow "
        "linearly with the examples (as the number of steps does); costs fixed per epoch "
        "(and ALSH-APPROX's rebuild schedule, which counts examples) make it approximate "
        "for a training set much smaller than the paper's. The note lists every setting of "
        "ours that differs from the paper's (training-set size, epochs, width, learning "
        "rate, optimizer, momentum, the method hyperparameters the paper states, and for "
        "times the torch threads and the CPU: the paper's times are from one Intel Core "
        "i9-9920X with PyTorch's default threads). The paper's NORB accuracies are not test "
        "accuracies (its loader evaluated on the training file).",
        "",
    ]
    if comparison.empty:
        lines += ["No configuration of this sweep matches a published number.", ""]
    else:
        rows = []
        for _, r in comparison.iterrows():
            accuracy = r["metric"] == "test_accuracy"
            fmt = ".2f" if accuracy else ".4g"
            # As printed in the paper (e.g. 110.98, 28.976), not rounded to our precision.
            published = format(r["published"], ".2f" if accuracy else "g")
            if r["published_spread"] is not None and r["published_spread"] == r["published_spread"]:
                published += f" ± {r['published_spread']:g}"
            ours = _number(r["ours"], fmt)
            if r["ours"] == r["ours"] and r["ours_std"] == r["ours_std"]:
                ours += f" ± {r['ours_std']:{fmt}}"
            measured = "-"
            if not accuracy:
                measured = _number(r["ours_measured"], fmt)
                if r["ours_measured_std"] == r["ours_measured_std"]:
                    measured += f" ± {r['ours_measured_std']:{fmt}}"
                size = r["ours_train_size"]
                measured += " s per epoch of " + (
                    f"{int(size)} examples" if size == size else "? examples (not recorded)"
                )
            rows.append(
                [
                    r["source"],
                    r["metric"],
                    group_name(r["dataset"], r["arch"]),
                    str(r["depth"]),
                    r["paper_label"],
                    r["label"],
                    r["compared_as"],
                    published,
                    ours,
                    measured,
                    str(r["seeds"]),
                    _number(r["difference"], "+.2f" if accuracy else "+.4g"),
                    _number(r["ratio"], ".3g"),
                    r["note"],
                ]
            )
        lines += markdown_table(
            [
                "source",
                "metric",
                "dataset",
                "depth",
                "paper",
                "ours",
                "compared as",
                "published (as printed)",
                "ours (mean ± std, compared)",
                "ours as measured",
                "seeds",
                "difference",
                "ours / published",
                "note",
            ],
            rows,
        )
    if unmatched:
        lines += [f"{unmatched} published number(s) have no matching cells in this sweep.", ""]
    return lines


def summary_markdown(summary: pd.DataFrame) -> list[str]:
    rows = []
    for _, r in summary.iterrows():
        rows.append(
            [
                group_name(r["dataset"], r["arch"]),
                r["label"],
                str(r["depth"]),
                str(r["seeds"]),
                " ".join(
                    filter(
                        None, [format_stat_pair(r, "test_accuracy", 100.0, ".2f"), summary_flag(r)]
                    )
                ),
                format_stat_pair(r, "val_accuracy", 100.0, ".2f"),
                format_stat_pair(r, "seconds_per_epoch", 1.0, ".3g"),
                format_stat_pair(r, "train_seconds", 1.0, ".4g"),
                str(r["threads"]),
            ]
        )
    return markdown_table(
        [
            "dataset",
            "method",
            "depth",
            "seeds",
            "test acc (%)",
            "val acc (%)",
            "s / epoch",
            "training time (s)",
            "torch threads",
        ],
        rows,
    )


def stopped_markdown(cells: pd.DataFrame, summary: pd.DataFrame) -> list[str]:
    """The cells that stopped before their last epoch, and whether the means count them."""
    if cells.empty:
        return []
    reasons = stop_reasons(cells)
    stopped = cells[reasons != COMPLETED].assign(_stop=reasons[reasons != COMPLETED])
    if stopped.empty:
        return []
    counted = bool(summary["stopped_in_means"].any()) if "stopped_in_means" in summary else False
    lines = [
        "## Cells that stopped early",
        "",
        f"{len(stopped)} finished cell(s) stopped before their last epoch; they are marked ⏹ "
        "in every table below and "
        + (
            "**counted** in the means (`--include-stopped`)."
            if counted
            else "left out of the means (`report --include-stopped` counts them)."
        )
        + " "
        + "; ".join(f"**{name}**: {text}" for name, text in REASONS.items())
        + ".",
        "",
    ]

    def number(value: object) -> str:
        return "-" if value is None or pd.isna(value) else f"{value:g}"

    rows = [
        [
            group_name(r["dataset"], r["arch"]),
            r["label"],
            str(r["depth"]),
            str(r["seed"]),
            stop_text(str(r["_stop"])),
            f"{r['epochs_done']} of {r['epochs']}",
            number(r.get("diverged_at_step")),
            number(r.get("max_cell_minutes")),
            f"`{r['cell_key']}`",
        ]
        for _, r in stopped.iterrows()
    ]
    return lines + markdown_table(
        [
            "dataset",
            "method",
            "depth",
            "seed",
            "stopped",
            "epochs",
            "at step",
            "budget (min)",
            "key",
        ],
        rows,
    )


def not_learned_markdown(cells: pd.DataFrame) -> list[str]:
    """The cells that did not learn, before any table, so that no number of theirs is read
    as a normal result."""
    flagged = not_learned_cells(cells)
    if flagged.empty:
        return []
    lines = [
        "## Cells that did not learn",
        "",
        f"{len(flagged)} finished cell(s) did not learn; their accuracies are marked ⚠ in every "
        "table below. **chance**: " + describe(CHANCE) + f" (an exact one-sided binomial test "
        f"against always predicting the most common test class, flagged above p = {ALPHA:g}); "
        "**diverged**: " + describe(DIVERGED) + ".",
        "",
    ]
    rows = [
        [
            group_name(r["dataset"], r["arch"]),
            r["label"],
            str(r["depth"]),
            str(r["seed"]),
            flag_text(str(r["learning_flag"])),
            f"{100 * float(r['test_accuracy']):.2f}",
            "-"
            if pd.isna(r.get("chance_accuracy"))
            else f"{100 * float(r['chance_accuracy']):.2f}",
            f"{float(r['final_train_loss']):.4g}",
            f"`{r['cell_key']}`",
        ]
        for _, r in flagged.iterrows()
    ]
    return lines + markdown_table(
        [
            "dataset",
            "method",
            "depth",
            "seed",
            "verdict",
            "test acc (%)",
            "chance (%)",
            "final train loss",
            "key",
        ],
        rows,
    )


def format_stat_pair(row: pd.Series, metric: str, scale: float, fmt: str) -> str:
    mean, std = float(row[metric]) * scale, float(row[f"{metric}_std"]) * scale
    if math.isnan(mean):
        return "-"
    return format(mean, fmt) + ("" if math.isnan(std) else " ± " + format(std, fmt))


def render_page(report: Report) -> str:
    data, analysis, out = report.data, report.analysis, report.out_dir
    name = _job_name(data.job_text) or data.root.name
    done = len(analysis.cells)
    lines = [
        f"# Sweep report: {name}",
        "",
        f"Results folder `{data.root}`, report written "
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')} by `python -m runner report`.",
        "",
        "## Cells",
        "",
    ]
    if data.expected is not None:
        in_job = {c.key for c in data.expected}
        done_in_job = len(data.done_keys & in_job)
        failed_in_job = sum(f.in_job for f in data.failed)
        lines.append(
            f"- The job file expands to {len(data.expected)} cells: {done_in_job} done, "
            f"{failed_in_job} failed, {len(data.missing)} missing (not run yet)."
        )
        if done - done_in_job:
            lines.append(
                f"- {done - done_in_job} finished cell(s) the job file does not make (earlier "
                "versions of it, or runs with --set) are included in the tables."
            )
    else:
        lines.append(f"- {done} finished cell(s), {len(data.failed)} failed. {data.job_problem}.")
    if data.unreadable:
        lines.append(
            f"- {len(data.unreadable)} unreadable result file(s), left out: "
            + ", ".join(f"`{p.name}`" for p in data.unreadable)
        )
    mix = mix_lines(analysis.code_versions)
    if mix:
        lines.append(f"- **{mix[0][0].upper() + mix[0][1:]}**: {mix[1]}:")
        lines += [f"  - {line}" for line in mix[2:]]
    lines.append("")
    if done == 0:
        lines += ["No finished cells yet: nothing to tabulate.", ""]

    lines += not_learned_markdown(analysis.cells)
    lines += stopped_markdown(analysis.cells, analysis.summary)
    if analysis.accuracy:
        lines += ["## Test accuracy (paper Table 3)", ""]
        for table in analysis.accuracy:
            lines += grid_markdown(table)
    if analysis.timing:
        lines += ["## Time per epoch (paper Tables 4, 5)", ""]
        for table in analysis.timing:
            lines += grid_markdown(table)
    if analysis.depth:
        lines += ["## Accuracy and training time vs depth (paper Figs. 9, 10)", ""]
        for table in analysis.depth:
            lines += grid_markdown(table)
    lines += _figures(report.figures, "depth", out)
    epoch_figures = _figures(report.figures, "epochs", out)
    if epoch_figures:
        lines += ["## Per-epoch curves (paper Figs. 5-8, 11-14)", "", *epoch_figures]
    confusion_figures = _figures(report.figures, "confusion", out)
    if confusion_figures:
        lines += ["## Confusion matrices and predicted labels (paper Figs. 4, 15)", ""]
        lines += confusion_figures
    active_figures = _figures(report.figures, "active", out)
    if analysis.active_set_tables or active_figures:
        lines += [
            "## ALSH-APPROX's active sets, beside Fig. 15 and Theorem 2",
            "",
            "The paper explains ALSH-APPROX's collapse with depth by 'a small subset of nodes "
            "[that] remains active in deeper layers, regardless of the input sample' (§11.3). "
            "Measured here at each cell's final epoch: the accuracy of the exact network (what "
            "the paper reports) and of the network through its hash tables (how it trained), "
            "how much the active sets of different inputs overlap (mean pairwise Jaccard over "
            "the probe batch, against random sets of the same size), and how many units were "
            "active for some training example in the last epoch.",
            "",
        ]
        for table in analysis.active_set_tables:
            lines += grid_markdown(table)
        lines += active_figures
    if analysis.probe_tables:
        lines += [
            "## Approximation error vs depth, against Theorem 2 (§7)",
            "",
            "The probe: after every epoch, each hidden layer's activations under the method's "
            "approximate forward pass are compared with the exact ones on a fixed validation "
            "batch, ||a_approx - a|| / ||a||. Theorem 2 (linear activations, active inputs "
            "carrying c times the weighted sum of the inactive ones) makes the estimate after "
            "k layers (c/(c+1))^k times the exact activation: an error of ((c+1)/c)^k - 1 "
            "relative to the estimate (the theorem's form), which is 1 - (c/(c+1))^k relative "
            "to the exact activation (what the probe measures). **What is fitted:** for each "
            "dataset and method, c minimises the sum of squared differences between "
            "1 - (c/(c+1))^k and the final-epoch probe error of every cell's last hidden "
            "layer, with k = the cell's depth and each seed one point. The right-hand panels "
            "show the same points as e/(1-e) against ((c+1)/c)^k - 1.",
            "",
        ]
        for table in analysis.probe_tables:
            lines += grid_markdown(table)
        lines += _figures(report.figures, "probe", out)
    if report.comparison is not None:
        lines += ["## Comparison with the paper", ""]
        lines += comparison_markdown(report.comparison, len(report.unmatched))
    if not analysis.summary.empty:
        lines += ["## Every configuration (mean ± std over seeds)", ""]
        lines += summary_markdown(analysis.summary)

    lines += ["## Missing and failed cells", ""]
    if data.expected is None:
        lines += [f"Missing cells cannot be listed: {data.job_problem}.", ""]
    elif not data.missing:
        lines += ["None missing: every cell of the job file has finished or failed.", ""]
    else:
        lines += [f"{len(data.missing)} cell(s) of the job file have not run:", ""]
        lines += markdown_table(
            ["cell", "key"], [[c.label(), c.key] for c in data.missing[:_MAX_LISTED]]
        )
        if len(data.missing) > _MAX_LISTED:
            lines += [f"... and {len(data.missing) - _MAX_LISTED} more.", ""]
    if data.failed:
        lines += [
            f"{len(data.failed)} cell(s) failed (records under `failed/`; "
            "`python -m runner status` shows them). By class, and what to do:",
            "",
        ]
        for name, count in class_counts([f.error_class for f in data.failed]):
            hint = FAILURE_HINTS.get(name, "see the records")
            lines.append(f"- **{name}** ({count}): {hint}")
        lines.append("")
        lines += markdown_table(
            ["cell", "class", "error", "in this job file"],
            [
                [f.label, f.error_class, f.message, "yes" if f.in_job else "no (earlier version)"]
                for f in data.failed[:_MAX_LISTED]
            ],
        )
    else:
        lines += ["No failed cells.", ""]

    lines += ["## Provenance", ""]
    if analysis.code_versions:
        lines.append(
            "- **code** (git commit, trainer and method code hashes): "
            + "; ".join(v.describe() for v in analysis.code_versions)
        )
    for title, values in analysis.provenance.items():
        listed = ", ".join(f"{v} ({n} cell{'s' if n != 1 else ''})" for v, n in values)
        lines.append(f"- **{title}**: {listed}")
    if data.job_files:
        lines.append(
            "- **job files submitted here**: " + ", ".join(f"`jobs/{f}`" for f in data.job_files)
        )
    lines.append("")
    if data.job_text is not None:
        lines += ["The job file of the latest submit (`job.toml`):", "", "```toml"]
        lines += [data.job_text.rstrip(), "```", ""]
    return "\n".join(lines)


def write_page(report: Report, path: Path) -> Path:
    atomic_write_bytes(path, render_page(report).encode("utf-8"))
    return path
