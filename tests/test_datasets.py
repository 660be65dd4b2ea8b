"""Dataset loading on fabricated files in the real on-disk formats, with the network blocked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from runner.datasets.loading import ensure_available, load_splits, prepare_splits
from runner.datasets.registry import DATASETS
from runner.errors import DatasetError
from tests.conftest import (
    EMNIST_LETTERS_FILES,
    MNIST_FILES,
    NORB_PREFIX,
    NetworkBlocked,
    fabricate_cifar10,
    fabricate_emnist_letters,
    fabricate_mnist_like,
    fabricate_norb,
)


def raw_pixels(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Undo the normalisation: pixels back in 0..1."""
    return x * std + mean


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
    valid = "valid: digits, mnist, fashion_mnist, kmnist, emnist_letters, norb, cifar10$"
    with pytest.raises(DatasetError, match=valid):
        ensure_available("imagenet", tmp_path, download=False)


def test_idx_writer_matches_torchvision_reader(tmp_path: Path) -> None:
    """Guards the fabricated-file helper itself against drifting from the real format."""
    from torchvision.datasets.mnist import read_image_file

    from tests.conftest import write_idx

    array = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    write_idx(tmp_path / "x-idx3-ubyte", array)
    assert np.array_equal(read_image_file(str(tmp_path / "x-idx3-ubyte")).numpy(), array)


def test_registry_has_the_papers_table_2_splits() -> None:
    table_2 = {  # train / val / test, image shape, classes
        "mnist": (55000, 5000, 10000, (1, 28, 28), 10),
        "fashion_mnist": (55000, 5000, 10000, (1, 28, 28), 10),
        "kmnist": (55000, 5000, 10000, (1, 28, 28), 10),
        "emnist_letters": (104800, 20000, 20800, (1, 28, 28), 26),
        "norb": (22300, 2000, 24300, (1, 96, 96), 5),
        "cifar10": (45000, 5000, 10000, (3, 32, 32), 10),
    }
    for name, (train, val, test, shape, classes) in table_2.items():
        info = DATASETS[name]
        assert (info.train, info.val, info.test) == (train, val, test)
        assert (info.image_shape, info.classes) == (shape, classes)
    assert DATASETS["norb"].features == 9216 and DATASETS["cifar10"].features == 3072


@pytest.mark.parametrize(
    ("name", "folder"), [("fashion_mnist", "FashionMNIST"), ("kmnist", "KMNIST")]
)
def test_mnist_family_loads_from_torchvision_layout(
    tmp_path: Path, no_network: None, name: str, folder: str
) -> None:
    root = tmp_path / "data"
    arrays = fabricate_mnist_like(root, folder, MNIST_FILES, n_train=240, n_test=60)
    splits = load_splits(name, root, split_seed=0, download=False)
    assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == (220, 20, 60)
    assert set(splits.y_train.tolist()) == set(range(10))
    expected = torch.from_numpy(arrays["test_images"].reshape(60, -1)).float() / 255
    assert torch.allclose(raw_pixels(splits.x_test, splits.mean, splits.std), expected, atol=1e-5)


def test_emnist_letters_are_upright_with_labels_from_zero(tmp_path: Path, no_network: None) -> None:
    root = tmp_path / "data"
    arrays = fabricate_emnist_letters(root, n_train=260, n_test=52)
    splits = load_splits("emnist_letters", root, split_seed=0, download=False, flatten=False)
    # 20000 of the official 124800 go to validation: the same share of 260 is 42.
    assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == (218, 42, 52)
    assert splits.x_test.shape == (52, 1, 28, 28)
    # Labels 1..26 on disk, 0..25 here, every class present.
    assert torch.equal(splits.y_test, torch.from_numpy(arrays["test_labels"]))
    assert set(splits.y_train.tolist()) | set(splits.y_val.tolist()) == set(range(26))
    # The files hold transposed images; the loader gives them back upright: the marker bar
    # runs along the top row, not down the left column.
    test = raw_pixels(splits.x_test, splits.mean, splits.std)
    upright = torch.from_numpy(arrays["test_images"]).float().unsqueeze(1) / 255
    assert torch.allclose(test, upright, atol=1e-5)
    assert torch.all(test[0, 0, 0, :10] > 0.99) and torch.all(test[0, 0, 1:, 0] < 0.01)


def test_emnist_letters_file_names_are_named_when_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        ensure_available("emnist_letters", tmp_path, download=False)
    for name in EMNIST_LETTERS_FILES:
        assert str(tmp_path / "EMNIST" / "raw" / name) in str(info.value)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzipped"])
def test_norb_left_images_from_the_official_files(
    tmp_path: Path, no_network: None, gz: bool
) -> None:
    root = tmp_path / "data"
    arrays = fabricate_norb(root, n_train=100, n_test=50, gz=gz)
    splits = load_splits("norb", root, split_seed=0, download=False, flatten=False)
    # 2000 of the official 24300 go to validation: the same share of 100 is 8.
    assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == (92, 8, 50)
    assert splits.x_train.shape == (92, 1, 96, 96)
    assert set(splits.y_train.tolist()) == set(range(5))
    # Test = the testing file (its last row is 17 everywhere), left camera, uint8 kept
    # exactly: 255 stays 1.0 and 0 stays 0.0 (no wrap-around), orientation kept.
    test = raw_pixels(splits.x_test, splits.mean, splits.std)
    expected = torch.from_numpy(arrays["test_images"]).float().unsqueeze(1) / 255
    assert torch.allclose(test, expected, atol=1e-5)
    assert torch.equal(splits.y_test, torch.from_numpy(arrays["test_labels"]))
    assert float(test[0, 0, 0, 0]) == pytest.approx(1.0, abs=1e-5)
    assert float(test[0, 0, -1, -1]) == pytest.approx(17 / 255, abs=1e-5)
    # Flattened for MLPs: 96x96 = 9216 features.
    assert load_splits("norb", root, split_seed=0, download=False).x_train.shape == (92, 9216)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzipped"])
def test_truncated_norb_file_is_reported(tmp_path: Path, gz: bool) -> None:
    root = tmp_path / "data"
    fabricate_norb(root, n_train=20, n_test=10, gz=gz)
    path = root / "smallnorb" / (f"{NORB_PREFIX['train']}-dat.mat" + (".gz" if gz else ""))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DatasetError, match="truncated or corrupt") as info:
        load_splits("norb", root, split_seed=0, download=False)
    assert str(path) in str(info.value)
    assert not (root / "prepared" / "norb-v1-split0").exists()


def test_norb_with_mismatched_labels_is_reported(tmp_path: Path) -> None:
    from tests.conftest import write_norb_matrix

    root = tmp_path / "data"
    fabricate_norb(root, n_train=20, n_test=10)
    cat = root / "smallnorb" / f"{NORB_PREFIX['test']}-cat.mat"
    write_norb_matrix(cat, np.full(10, 7, dtype=np.int32))  # categories run 0..4
    with pytest.raises(DatasetError, match=r"categories 7\.\.7, expected 0\.\.4"):
        load_splits("norb", root, split_seed=0, download=False)


def test_missing_norb_names_every_file_plain_or_gzipped(tmp_path: Path, no_network: None) -> None:
    with pytest.raises(DatasetError) as info:
        ensure_available("norb", tmp_path, download=True)
    message = str(info.value)
    assert "download failed" in message
    for split, kind in (("train", "dat"), ("train", "cat"), ("test", "dat"), ("test", "cat")):
        name = f"{NORB_PREFIX[split]}-{kind}.mat"
        assert f"{tmp_path / 'smallnorb' / name}  (or {name}.gz)" in message
    assert not list((tmp_path / "smallnorb").glob("*"))  # no partial download left behind


def test_cifar10_images_and_labels(tmp_path: Path, no_network: None) -> None:
    root = tmp_path / "data"
    arrays = fabricate_cifar10(root, per_batch=40, n_test=50)
    splits = load_splits(
        "cifar10", root, split_seed=0, download=False, flatten=False, verify_checksums=False
    )
    assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == (180, 20, 50)
    assert splits.x_train.shape == (180, 3, 32, 32)
    assert set(splits.y_train.tolist()) == set(range(10))
    test = raw_pixels(splits.x_test, splits.mean, splits.std)
    assert torch.allclose(test, torch.from_numpy(arrays["test_images"]).float() / 255, atol=1e-5)
    # Channel order and orientation: image 0 of the training set is red at the top-left and
    # green at the bottom-right. It lands in train or val depending on the split.
    x0 = torch.cat([splits.x_train, splits.x_val])
    pixels = raw_pixels(x0, splits.mean, splits.std)
    marked = [i for i in range(len(pixels)) if float(pixels[i, 0, 0, 0]) > 0.99]
    assert len(marked) == 1
    image = pixels[marked[0]]
    assert float(image[0, 0, 0]) > 0.99 and float(image[1, 0, 0]) < 0.01
    assert float(image[1, -1, -1]) > 0.99 and float(image[0, -1, -1]) < 0.01
    flat = load_splits("cifar10", root, split_seed=0, download=False, verify_checksums=False)
    assert flat.x_train.shape == (180, 3072)


def test_cifar10_md5_mismatch_names_the_file(tmp_path: Path, no_network: None) -> None:
    root = tmp_path / "data"
    fabricate_cifar10(root, per_batch=10, n_test=10)
    with pytest.raises(DatasetError, match="does not match its published md5") as info:
        load_splits("cifar10", root, split_seed=0, download=False)
    assert str(root / "cifar-10-batches-py" / "data_batch_1") in str(info.value)
    assert not (root / "prepared" / "cifar10-v1-split0").exists()


def test_truncated_cifar10_batch_is_reported_even_unverified(tmp_path: Path) -> None:
    root = tmp_path / "data"
    fabricate_cifar10(root, per_batch=10, n_test=10)
    path = root / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DatasetError, match="truncated or corrupt") as info:
        load_splits("cifar10", root, split_seed=0, download=False, verify_checksums=False)
    assert f"could not read {path} " in str(info.value)  # the one file, not a list of all


def test_missing_cifar10_download_fails_clearly(tmp_path: Path, no_network: None) -> None:
    with pytest.raises(DatasetError) as info:
        ensure_available("cifar10", tmp_path, download=True)
    message = str(info.value)
    assert "download failed" in message
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in message


def test_gzipped_idx_files_are_checked_against_published_md5(tmp_path: Path) -> None:
    """Offline users often have only the published .gz files: they are decompressed in
    place, after torchvision's published md5 is checked (fabricated ones cannot match)."""
    import gzip

    root = tmp_path / "data"
    fabricate_mnist_like(root, "MNIST", MNIST_FILES)
    raw = root / "MNIST" / "raw"
    for name in MNIST_FILES:
        (raw / f"{name}.gz").write_bytes(gzip.compress((raw / name).read_bytes()))
        (raw / name).unlink()
    with pytest.raises(DatasetError, match="does not match its published md5") as info:
        ensure_available("mnist", root, download=False)
    assert str(raw / "train-images-idx3-ubyte.gz") in str(info.value)
    assert not (raw / "train-images-idx3-ubyte").exists()  # nothing half-done
    ensure_available("mnist", root, download=False, verify_checksums=False)
    assert all((raw / name).is_file() for name in MNIST_FILES)
    assert len(load_splits("mnist", root, split_seed=0, download=False).y_test) == 60


def test_idx_labels_not_matching_images_are_reported(tmp_path: Path) -> None:
    from tests.conftest import write_idx

    root = tmp_path / "data"
    fabricate_mnist_like(root, "KMNIST", MNIST_FILES)
    labels = root / "KMNIST" / "raw" / "t10k-labels-idx1-ubyte"
    write_idx(labels, np.zeros(59, dtype=np.uint8))
    with pytest.raises(DatasetError, match="59 labels for the 60 images") as info:
        ensure_available("kmnist", root, download=False)
    assert str(labels) in str(info.value)


@pytest.fixture
def every_dataset_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    fabricate_mnist_like(root, "MNIST", MNIST_FILES)
    fabricate_mnist_like(root, "FashionMNIST", MNIST_FILES, seed=1)
    fabricate_mnist_like(root, "KMNIST", MNIST_FILES, seed=2)
    fabricate_emnist_letters(root)
    fabricate_norb(root, n_train=60, n_test=20)
    fabricate_cifar10(root, per_batch=12, n_test=20)
    return root


def test_train_limit_works_for_every_dataset(every_dataset_root: Path, no_network: None) -> None:
    """A real cell per dataset, through the cell function: only the first 30 training
    examples are used (2 steps at batch 20), the network has the dataset's input size."""
    from runner.datasets.prepared import prepare
    from runner.job.cells import Cell
    from runner.job.spec import SHARED_PARAMS
    from runner.run.cellrun import run_cell

    # Fabricated CIFAR pickles cannot match the published md5s: prepare them explicitly
    # unverified, as a user would with `data prepare --skip-checksums`; cells then read the
    # prepared arrays.
    prepare("cifar10", every_dataset_root, 0, download=False, verify_checksums=False)
    for name, info in DATASETS.items():
        values = {p.name: p.default for p in SHARED_PARAMS}
        values.update(
            method="standard",
            dataset=name,
            width=8,
            depth=1,
            epochs=2,
            batch_size=20,
            train_limit=30,
        )
        payload = Cell(values=values, torch_threads=1).to_payload()
        result = run_cell(payload, data_root=str(every_dataset_root), download=False)
        assert result["status"] == "ok", result.get("failure")
        row = result["row"]
        assert row["steps"] == 2 * 2, name
        assert row["input_features"] == info.features, name
        assert row["n_parameters"] == (info.features + 1) * 8 + (8 + 1) * info.classes, name
