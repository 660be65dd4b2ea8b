"""The shared training loop's data path: examples are gathered in shuffled chunks (bounded
memory), and the chunk size never changes which batches a cell sees, so never its result;
`train_limit` picks a seeded random subset."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest
import torch

from runner.datasets.loading import load_splits
from runner.job.cells import TRAIN_LIMIT_VERSION, Cell
from runner.job.grid import expand
from runner.job.spec import parse_spec
from runner.run import trainer
from runner.run.cellrun import run_cell


def digits_cell(method: str, batch_size: int) -> Cell:
    job = f"""
        name = "chunks"
        [params]
        method = "{method}"
        dataset = "digits"
        width = 32
        depth = 2
        epochs = 2
        batch_size = {batch_size}
        lr = 0.05
        train_limit = 203  # a multiple of no chunk and no batch: the last ones are short
        [methods.dropout]
        keep = 0.5
    """
    (cell,) = expand(parse_spec(textwrap.dedent(job), "chunks.toml")).cells
    return cell


@pytest.mark.parametrize(("method", "batch_size"), [("standard", 1), ("dropout", 20)])
def test_gather_chunk_size_does_not_change_results(
    method: str, batch_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    cell = digits_cell(method, batch_size)
    rows = {}
    # 10**9: the whole epoch gathered at once; 7: chunks of 7 examples (of one batch of 20
    # when the batch is larger than a chunk).
    for rows_per_gather in (10**9, 7, trainer.GATHER_ROWS):
        monkeypatch.setattr(trainer, "GATHER_ROWS", rows_per_gather)
        result = run_cell(cell.to_payload())
        assert result["status"] == "ok", result.get("failure")
        rows[rows_per_gather] = result["row"]
    hashes = {r["weights_sha256"] for r in rows.values()}
    assert len(hashes) == 1, rows
    assert len({r["steps"] for r in rows.values()}) == 1
    assert rows[7]["steps"] == 2 * -(-203 // batch_size)


def test_train_limit_takes_a_seeded_random_subset_not_the_first_examples() -> None:
    from runner.datasets.loading import Splits

    # A training split stored by class, as some official files are: its first 20 are one class.
    labels = torch.arange(10).repeat_interleave(50)
    images = labels.float().unsqueeze(1).repeat(1, 4)
    digits = load_splits("digits", Path("unused"), split_seed=0, download=False)
    splits: Splits = dataclasses.replace(digits, x_train=images, y_train=labels)

    subset = splits.limited(20, seed=0)
    assert len(subset.y_train) == 20 and len(subset.y_train.unique()) >= 6
    assert torch.equal(subset.x_train[:, 0], subset.y_train.float())  # rows stay paired
    assert torch.equal(subset.y_train, splits.limited(20, seed=0).y_train)  # seeded
    assert not torch.equal(subset.y_train, splits.limited(20, seed=1).y_train)
    assert splits.limited(10_000, seed=0) is splits  # a limit above the size is no limit


def test_train_limit_cells_train_on_that_many_and_have_their_own_keys() -> None:
    cell = digits_cell("standard", 1)  # train_limit = 203
    row = run_cell(cell.to_payload())["row"]
    assert row["train_size"] == 203 and row["steps"] == 2 * 203
    assert cell.identity()["train_limit_version"] == TRAIN_LIMIT_VERSION
    unlimited = Cell(values={**cell.values, "train_limit": None}, torch_threads=1)
    assert "train_limit_version" not in unlimited.identity()
