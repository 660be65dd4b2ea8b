"""The `data` verbs: list the official files and prepared splits in a data root, and prepare
datasets (fetch where allowed, check, convert)."""

from __future__ import annotations

import argparse

from rich.markup import escape
from rich.table import Table

from runner.cli.output import console, err_console


def cmd_data_list(args: argparse.Namespace) -> int:
    from runner.datasets.files import human_size
    from runner.datasets.inventory import inventory
    from runner.datasets.locations import resolve_data_root

    root = resolve_data_root(args.data_root)
    entries = inventory(root)
    console.print(f"[bold]Official files in {escape(str(root))}[/]")
    for entry in entries:
        present = [f for f in entry.files if f.bytes is not None]
        if not entry.files:
            state = "bundled with scikit-learn, nothing to fetch"
        else:
            state = f"{len(present)} of {len(entry.files)} official files"
        console.print(f"{entry.info.name} ({entry.info.summary}): {state}")
        for f in entry.files:  # lines, not a table: paths and sha256 must never be folded
            shown = f.path.relative_to(root)
            if f.bytes is None:
                console.print(f"  [red]missing[/] {escape(str(shown))}")
            else:
                console.print(f"  {escape(str(shown))}  {human_size(f.bytes)}  sha256 {f.sha256}")

    prepared = Table(title=f"prepared splits in {escape(str(root / 'prepared'))}")
    for column in ("dataset", "version", "split seed", "train / val / test", "size", "mean / std"):
        prepared.add_column(column)
    prepared.add_column("state", overflow="fold")
    for entry in entries:
        for p in entry.prepared:
            sizes = p.sizes or {}
            prepared.add_row(
                entry.info.name,
                str(p.version),
                str(p.split_seed),
                " / ".join(str(sizes.get(s, "?")) for s in ("train", "val", "test")),
                human_size(p.bytes),
                "-" if p.norm_mean is None else f"{p.norm_mean:.4f} / {p.norm_std:.4f}",
                "[green]ok[/]" if p.problem is None else f"[yellow]{escape(p.problem)}[/]",
            )
    if prepared.row_count:
        console.print(prepared)
    else:
        console.print("No prepared splits yet.")
    console.print("Prepare with: python -m runner data prepare NAME... [--data-root DIR]")
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from runner.datasets.files import human_size
    from runner.datasets.locations import downloads_allowed, resolve_data_root
    from runner.datasets.prepared import info_for, prepare
    from runner.errors import DatasetError

    for name in args.names:  # every name checked before anything is fetched
        info_for(name)
    root = resolve_data_root(args.data_root)
    failures = []
    for name in args.names:
        try:
            splits = prepare(
                name,
                root,
                args.split_seed,
                download=downloads_allowed(),
                verify_checksums=not args.skip_checksums,
            )
        except DatasetError as exc:
            failures.append(str(exc))
            err_console.print(f"[red]{name}: not prepared[/]")
            continue
        sizes = splits.sizes()
        where = "in memory only (not stored)" if splits.path is None else str(splits.path)
        stored = sum(a.nbytes for a in splits.arrays.values())
        console.print(
            f"[green]{name}[/]: {sizes['train']} / {sizes['val']} / {sizes['test']} "
            f"(train / val / test, split seed {args.split_seed}), {human_size(stored)}, "
            f"mean {splits.norm_mean:.4f} std {splits.norm_std:.4f} -> {escape(where)}"
        )
    if failures:
        raise DatasetError("\n".join(failures))
    return 0
