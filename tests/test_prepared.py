"""The prepared-array cache: written once, verified on every load, safe with several processes."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from runner.datasets import loading
from runner.datasets.files import digest
from runner.datasets.loading import load_splits
from runner.datasets.prepared import ARRAYS, normalisation_stats, prepare
from runner.datasets.registry import DATASETS
from runner.errors import DatasetError
from tests.conftest import MNIST_FILES, REPO, fabricate_norb


@pytest.fixture(autouse=True)
def fresh_worker_cache() -> Iterator[None]:
    """Each test starts like a new worker process: nothing in memory."""
    loading._CACHE.clear()
    yield
    loading._CACHE.clear()


def test_prepared_once_then_loaded_without_the_official_files(
    mnist_root: Path, no_network: None
) -> None:
    first = load_splits("mnist", mnist_root, split_seed=0, download=False)
    folder = mnist_root / "prepared" / "mnist-v1-split0"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["sizes"] == {"train": 220, "val": 20, "test": 60}
    assert (meta["norm_mean"], meta["norm_std"]) == (first.mean, first.std)
    assert meta["split_fingerprint"] == first.split_fingerprint
    raw = mnist_root / "MNIST" / "raw"
    recorded = {s["file"]: s["sha256"] for s in meta["sources"]}
    assert recorded == {f"MNIST/raw/{n}": digest(raw / n) for n in MNIST_FILES}
    assert meta["arrays"]["train_images"]["shape"] == [220, 1, 28, 28]
    assert meta["arrays"]["train_images"]["dtype"] == "uint8"

    # A new worker reads the prepared arrays: the official files are not even needed.
    for name in MNIST_FILES:
        (raw / name).unlink()
    loading._CACHE.clear()
    second = load_splits("mnist", mnist_root, split_seed=0, download=False)
    for field in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(first, field), getattr(second, field)), field
    assert second.describe() == first.describe()
    # Another split seed is another prepared copy (and needs the official files again).
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte"):
        load_splits("mnist", mnist_root, split_seed=1, download=False)


def test_a_copy_made_from_official_files_since_replaced_is_prepared_again(
    mnist_root: Path, no_network: None
) -> None:
    from tests.conftest import fabricate_mnist_like

    first = load_splits("mnist", mnist_root, split_seed=0, download=False)
    folder = mnist_root / "prepared" / "mnist-v1-split0"
    meta_before = (folder / "meta.json").read_bytes()

    # Touched (copied without keeping times): hashed, found the same, the copy is kept.
    for name in MNIST_FILES:
        os.utime(mnist_root / "MNIST" / "raw" / name)
    loading._CACHE.clear()
    again = load_splits("mnist", mnist_root, split_seed=0, download=False)
    assert torch.equal(again.x_train, first.x_train)
    assert (folder / "meta.json").read_bytes() == meta_before

    # Replaced by other files of the same sizes (a new download): prepared again from them.
    fabricate_mnist_like(mnist_root, "MNIST", MNIST_FILES, seed=1)
    loading._CACHE.clear()
    replaced = load_splits("mnist", mnist_root, split_seed=0, download=False)
    assert not torch.equal(replaced.x_train, first.x_train)
    recorded = json.loads((folder / "meta.json").read_text())["sources"]
    raw = mnist_root / "MNIST" / "raw"
    assert {s["file"]: s["sha256"] for s in recorded} == {
        f"MNIST/raw/{n}": digest(raw / n) for n in MNIST_FILES
    }


def test_mnist_inputs_are_bit_identical_to_the_direct_computation(mnist_root: Path) -> None:
    """Why mnist's dataset version did not change with the cache: the walking skeleton's
    computation (float64 statistics over the whole training split) gives the same bits."""
    from runner.datasets import idx
    from runner.datasets.prepared import carve_validation

    official = idx.read_official("mnist", mnist_root)
    train_idx, val_idx = carve_validation(240, DATASETS["mnist"], split_seed=0)
    scaled = official.train_images[train_idx].to(torch.float64) / 255.0
    mean, std = float(scaled.mean()), float(scaled.std())

    def normalise(images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32).div_(255.0).sub_(mean).div_(std)
        return x.reshape(len(x), -1)

    splits = load_splits("mnist", mnist_root, split_seed=0, download=False)
    assert torch.equal(splits.x_train, normalise(official.train_images[train_idx]))
    assert torch.equal(splits.x_val, normalise(official.train_images[val_idx]))
    assert torch.equal(splits.x_test, normalise(official.test_images))
    assert torch.equal(splits.y_val, official.train_labels[val_idx])
    assert splits.mean == pytest.approx(mean, rel=1e-15)
    assert splits.std == pytest.approx(std, rel=1e-15)


@pytest.mark.parametrize("seed", range(8))
def test_histogram_statistics_equal_float64_ones(seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = int(rng.integers(2, 50_000))
    high = int(rng.integers(2, 257))
    images = rng.integers(0, high, size=size, dtype=np.uint8)
    mean, std = normalisation_stats(images)
    scaled = torch.from_numpy(images).to(torch.float64) / 255.0
    assert mean == pytest.approx(float(scaled.mean()), rel=1e-14, abs=1e-16)
    assert std == pytest.approx(float(scaled.std()), rel=1e-12)
    # What the inputs see: the statistics rounded to float32.
    assert np.float32(mean) == np.float32(float(scaled.mean()))
    assert np.float32(std) == np.float32(float(scaled.std()))


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "drop_meta"])
def test_damaged_prepared_copy_is_never_used(
    mnist_root: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    first = load_splits("mnist", mnist_root, split_seed=0, download=False)
    folder = mnist_root / "prepared" / "mnist-v1-split0"
    target = folder / "train_images.npy"
    data = bytearray(target.read_bytes())
    if damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "flip_byte":
        data[-1] ^= 0xFF  # same size, different content: only the sha256 sees it
        target.write_bytes(data)
    else:
        (folder / "meta.json").unlink()

    loading._CACHE.clear()
    again = load_splits("mnist", mnist_root, split_seed=0, download=False)
    assert torch.equal(again.x_train, first.x_train)  # prepared again from the IDX files
    assert "is damaged" in caplog.text
    assert (
        digest(target)
        == json.loads((folder / "meta.json").read_text())["arrays"]["train_images"]["sha256"]
    )

    # Damaged again, and nothing to prepare it from: reported, not used.
    target.write_bytes(target.read_bytes()[:100])
    for name in MNIST_FILES:
        (mnist_root / "MNIST" / "raw" / name).unlink()
    loading._CACHE.clear()
    with pytest.raises(DatasetError) as info:
        load_splits("mnist", mnist_root, split_seed=0, download=False)
    message = str(info.value)
    assert f"the prepared copy {folder} is damaged" in message
    assert "train_images.npy" in message and "train-images-idx3-ubyte" in message


def test_failed_write_leaves_nothing_half_written(
    mnist_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runner.datasets import prepared

    real_save = np.save
    calls = []

    def failing_save(handle, array, allow_pickle=False):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated crash while writing")
        real_save(handle, array, allow_pickle=allow_pickle)

    monkeypatch.setattr(prepared.np, "save", failing_save)
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare("mnist", mnist_root, 0, download=False)
    monkeypatch.undo()
    assert [p.name for p in (mnist_root / "prepared").iterdir()] == [".mnist-v1-split0.lock"]


def test_leftovers_of_a_killed_writer_are_removed(mnist_root: Path) -> None:
    stale = mnist_root / "prepared" / ".mnist-v1-split0.tmp-abandoned"
    stale.mkdir(parents=True)
    (stale / "train_images.npy").write_bytes(b"half")
    prepare("mnist", mnist_root, 0, download=False)
    assert not stale.exists()
    assert (mnist_root / "prepared" / "mnist-v1-split0" / "meta.json").is_file()


_PREPARE_SCRIPT = textwrap.dedent(
    """
    import logging, sys
    from pathlib import Path
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    from runner.datasets.prepared import prepare
    splits = prepare("norb", Path(sys.argv[1]), 0, download=False)
    print(splits.meta["prepared_at"], splits.meta["arrays"]["train_images"]["sha256"])
    """
)


def _wait_for(condition, what: str, limit: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


def test_two_processes_preparing_at_once_make_one_intact_copy(tmp_path: Path) -> None:
    root = tmp_path / "data"
    fabricate_norb(root, n_train=60, n_test=20, gz=True)
    lock = root / "prepared" / ".norb-v1-split0.lock"
    lock.parent.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(lock, "a") as held:
        # Hold the lock so that both processes are certain to arrive while it is taken.
        fcntl.flock(held, fcntl.LOCK_EX)
        procs, logs = [], []
        for i in range(2):
            log_path = tmp_path / f"stderr{i}.txt"
            logs.append(log_path)
            with open(log_path, "w") as err:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-c", _PREPARE_SCRIPT, str(root)],
                        stdout=subprocess.PIPE,
                        stderr=err,
                        text=True,
                        env=env,
                    )
                )
        _wait_for(
            lambda: all("waiting for another process" in p.read_text() for p in logs),
            "both processes to wait for the lock",
        )
        fcntl.flock(held, fcntl.LOCK_UN)
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [p.read_text() for p in logs]
    writers = [p for p in logs if "prepared norb in" in p.read_text()]
    assert len(writers) == 1  # one wrote; the other found it done and read it
    assert outputs[0] == outputs[1]  # the very same copy (time of writing and checksum)
    folder = root / "prepared" / "norb-v1-split0"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [*(f"{a}.npy" for a in ARRAYS), "meta.json"]
    )
    assert sorted(p.name for p in folder.parent.iterdir()) == [".norb-v1-split0.lock", folder.name]
    loaded = prepare("norb", root, 0, download=False)  # verifies every checksum
    assert loaded.sizes() == {"train": 55, "val": 5, "test": 20}


def test_image_tensors_for_cnns_share_memory_with_flat_ones(tmp_path: Path) -> None:
    root = tmp_path / "data"
    fabricate_norb(root, n_train=30, n_test=10)
    images = load_splits("norb", root, split_seed=0, download=False, flatten=False)
    flat = load_splits("norb", root, split_seed=0, download=False, flatten=True)
    assert images.x_train.shape == (28, 1, 96, 96) and flat.x_train.shape == (28, 9216)
    assert images.x_train.data_ptr() == flat.x_train.data_ptr()  # one copy per worker
    assert flat.describe() == images.describe()
    assert flat.describe()["input_features"] == 9216


def test_bundled_digits_write_nothing_to_the_data_root(tmp_path: Path) -> None:
    load_splits("digits", tmp_path / "root", split_seed=0, download=False)
    assert not (tmp_path / "root").exists()


def test_unwritable_data_root_prepares_in_memory(
    mnist_root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A read-only shared data root (simulated: the tests run as root, who may write
    anywhere) still serves its datasets; nothing is stored."""
    import errno

    from runner.datasets import prepared

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(prepared, "file_lock", read_only)
    splits = load_splits("mnist", mnist_root, split_seed=0, download=False)
    assert len(splits.y_train) == 220
    assert "preparing mnist in memory" in caplog.text
    assert not (mnist_root / "prepared" / "mnist-v1-split0").exists()
