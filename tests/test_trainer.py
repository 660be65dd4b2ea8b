"""The shared training loop's data path: examples are gathered in shuffled chunks (bounded
memory), and the chunk size never changes which batches a cell sees, so never its result."""

from __future__ import annotations

import textwrap

import pytest

from runner import trainer
from runner.cellrun import run_cell
from runner.cells import Cell
from runner.grid import expand
from runner.spec import parse_spec


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
