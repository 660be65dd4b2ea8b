"""Dataset loading on fabricated files in the real on-disk formats, with the network blocked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from runner.datasets.loading import ensure_available, load_splits, prepare_splits
from runner.datasets.registry import DATASETS
from runner.errors import DatasetError
from tests.conftest import MNIST_FILES, NetworkBlocked, fabricate_mnist_like


def test_guard_blocks_the_network(no_network: None) -> None:
    import socket

    with pytest.raises(NetworkBlocked):
        socket.getaddrinfo("ossci-datasets.s3.amazonaws.com", 443)


def test_mnist_loads_from_torchvision_layout(tmp_path: Path, no_network: None) -> None:
    root = tmp_path / "data"
    arrays = fabricate_mnist_like(root, "MNIST", MNIST_FILES, n_train=240, n_test=60)
    splits = load_splits("mnist", root, split_seed=0, download=False)
    # The paper's 55000 / 5000 share of the official 60000, scaled to the fabricated 240.
    assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == (220, 20, 60)
    assert splits.x_train.shape == (220, 784) and splits.x_train.dtype == torch.float32
    assert splits.y_train.dtype == torch.int64
    assert set(splits.y_test.tolist()) == set(range(10))
    # Test set: the official test file, in order; orientation kept (marker at top-left).
    raw = splits.x_test * splits.std + splits.mean
    expected = torch.from_numpy(arrays["test_images"].reshape(60, -1)).float() / 255
    assert torch.allclose(raw, expected, atol=1e-5)
    assert raw[0, 0] == pytest.approx(1.0, abs=1e-5) and raw[0, 783] == pytest.approx(0, abs=1e-5)
    # Normalisation statistics come from the training split only.
    assert float(splits.x_train.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(splits.x_train.std()) == pytest.approx(1.0, abs=1e-3)


def test_validation_split_is_seeded_disjoint_and_covering(mnist_root: Path) -> None:
    from runner.datasets import idx

    official = idx.read_official("mnist", mnist_root)
    info = DATASETS["mnist"]
    a = prepare_splits(official, info, split_seed=0)
    b = prepare_splits(official, info, split_seed=0)
    c = prepare_splits(official, info, split_seed=1)
    assert a.split_fingerprint == b.split_fingerprint != c.split_fingerprint
    assert torch.equal(a.x_val, b.x_val) and not torch.equal(a.x_val, c.x_val)
    # Train and validation partition the official training set.
    rows = {tuple(r) for r in torch.cat([a.x_train, a.x_val]).numpy().round(4).tolist()}
    everything = (official.train_images.reshape(240, -1).float() / 255 - a.mean) / a.std
    assert rows == {tuple(r) for r in everything.numpy().round(4).tolist()}


def test_missing_files_are_named_with_where_to_put_them(tmp_path: Path, no_network: None) -> None:
    root = tmp_path / "empty"
    with pytest.raises(DatasetError) as info:
        ensure_available("mnist", root, download=False)
    message = str(info.value)
    for name in MNIST_FILES:
        assert str(root / "MNIST" / "raw" / name) in message
    assert "CPUSWEEP_OFFLINE" in message and "--data-root" in message


def test_failed_download_is_a_clear_error(tmp_path: Path, no_network: None) -> None:
    root = tmp_path / "empty"
    with pytest.raises(DatasetError) as info:
        ensure_available("mnist", root, download=True)
    message = str(info.value)
    assert "download failed" in message
    assert str(root / "MNIST" / "raw" / "train-images-idx3-ubyte") in message


def test_truncated_file_is_reported_not_used(mnist_root: Path) -> None:
    path = mnist_root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        load_splits("mnist", mnist_root, split_seed=0, download=False)


def test_digits_needs_no_download(tmp_path: Path, no_network: None) -> None:
    splits = load_splits("digits", tmp_path / "nothing-here", split_seed=0, download=False)
    info = DATASETS["digits"]
    assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == (
        info.train,
        info.val,
        info.test,
    )
    assert splits.x_train.shape[1] == 64
    assert set(splits.y_train.tolist()) == set(range(10))
    # The test set does not move with the split seed (it plays the official test set).
    other = load_splits("digits", tmp_path / "nothing-here", split_seed=3, download=False)
    assert torch.equal(splits.y_test, other.y_test)
    assert not torch.equal(splits.y_val, other.y_val)


def test_unknown_dataset_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="valid: digits, mnist"):
        ensure_available("imagenet", tmp_path, download=False)


def test_idx_writer_matches_torchvision_reader(tmp_path: Path) -> None:
    """Guards the fabricated-file helper itself against drifting from the real format."""
    from torchvision.datasets.mnist import read_image_file

    from tests.conftest import write_idx

    array = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    write_idx(tmp_path / "x-idx3-ubyte", array)
    assert np.array_equal(read_image_file(str(tmp_path / "x-idx3-ubyte")).numpy(), array)
