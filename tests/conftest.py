"""Shared fixtures: tiny datasets in the real on-disk formats, a network guard, job files."""

from __future__ import annotations

import gzip
import ipaddress
import os
import pickle
import socket
import struct
import textwrap
from pathlib import Path

import numpy as np
import pytest

# No test may reach a Ray cluster it did not start, or the network.
os.environ.pop("RAY_ADDRESS", None)
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

REPO = Path(__file__).resolve().parent.parent


class NetworkBlocked(RuntimeError):
    pass


def _is_loopback(address: object) -> bool:
    if not isinstance(address, tuple) or not address:
        return True  # unix sockets and the like
    host = str(address[0])
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any name lookup or connection that would leave this machine."""
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect

    def guarded_getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host not in (None, "localhost") and not _is_loopback((host,)):
            raise NetworkBlocked(f"test tried to resolve {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    def guarded_connect(self, address):  # type: ignore[no-untyped-def]
        if not _is_loopback(address):
            raise NetworkBlocked(f"test tried to connect to {address!r}")
        return real_connect(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", guarded_connect)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an IDX file: 2 zero bytes, type byte, ndim, big-endian int32 dims, raw data."""
    type_codes = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C}
    code = type_codes[array.dtype.type]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, code, array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(array.dtype.newbyteorder(">")).tobytes())


def fabricate_mnist_like(
    root: Path,
    folder: str,
    files: tuple[str, str, str, str],
    n_train: int = 240,
    n_test: int = 60,
    classes: int = 10,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Class-dependent images (so a network can learn them), every class present, and one
    asymmetric marker (top-left pixel bright in image 0) to check orientation."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = (np.arange(n) % classes).astype(np.uint8)
        rng.shuffle(labels)
        images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            row = 2 + 2 * int(label)
            images[i, row : row + 2, 4:24] = 250  # a bar whose height encodes the class
        images[0, 0, 0] = 255
        images[0, 27, 27] = 0
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    train_img, train_lbl, test_img, test_lbl = files
    raw = root / folder / "raw"
    write_idx(raw / train_img, arrays["train_images"])
    write_idx(raw / train_lbl, arrays["train_labels"])
    write_idx(raw / test_img, arrays["test_images"])
    write_idx(raw / test_lbl, arrays["test_labels"])
    return arrays


MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@pytest.fixture
def mnist_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    fabricate_mnist_like(root, "MNIST", MNIST_FILES)
    return root


EMNIST_LETTERS_FILES = (
    "emnist-letters-train-images-idx3-ubyte",
    "emnist-letters-train-labels-idx1-ubyte",
    "emnist-letters-test-images-idx3-ubyte",
    "emnist-letters-test-labels-idx1-ubyte",
)


def _block_images(
    rng: np.random.Generator, labels: np.ndarray, shape: tuple[int, ...]
) -> np.ndarray:
    """Noise with a bright 3x3 block whose position encodes the label (learnable)."""
    images = rng.integers(0, 60, size=(len(labels), *shape)).astype(np.uint8)
    for i, label in enumerate(labels):
        row, col = 2 + 4 * (int(label) // 6), 2 + 4 * (int(label) % 6)
        images[i, ..., row : row + 3, col : col + 3] = 250
    return images


def fabricate_emnist_letters(
    root: Path, n_train: int = 260, n_test: int = 52, seed: int = 0
) -> dict[str, np.ndarray]:
    """EMNIST-Letters as published: labels 1..26, images stored transposed. Returns the
    upright images and labels 0..25 that the loader must give back. Image 0 of each split
    has a bar along its top row (asymmetric under transposition)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    raw = root / "EMNIST" / "raw"
    for split, n, (img_file, lbl_file) in (
        ("train", n_train, EMNIST_LETTERS_FILES[:2]),
        ("test", n_test, EMNIST_LETTERS_FILES[2:]),
    ):
        labels = (np.arange(n) % 26).astype(np.uint8)
        rng.shuffle(labels)
        upright = _block_images(rng, labels, (28, 28))
        upright[0, 0, :10] = 255  # top row, left part: a horizontal bar
        upright[0, 1:, 0] = 0
        write_idx(raw / img_file, np.ascontiguousarray(upright.transpose(0, 2, 1)))
        write_idx(raw / lbl_file, labels + 1)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = upright, labels.astype(np.int64)
    return arrays


NORB_PREFIX = {
    "train": "smallnorb-5x46789x9x18x6x2x96x96-training",
    "test": "smallnorb-5x01235x9x18x6x2x96x96-testing",
}


def write_norb_matrix(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """Small NORB's binary matrix: little-endian magic (element type), ndim, at least three
    dimension slots (unused ones 1), raw little-endian data."""
    magic = {np.dtype(np.uint8): 0x1E3D4C55, np.dtype(np.int32): 0x1E3D4C54}[array.dtype]
    dims = list(array.shape) + [1] * max(0, 3 - array.ndim)
    data = struct.pack(f"<ii{len(dims)}i", magic, array.ndim, *dims)
    data += array.astype(array.dtype.newbyteorder("<")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data, compresslevel=1))
    else:
        path.write_bytes(data)
    return path


def fabricate_norb(
    root: Path, n_train: int = 100, n_test: int = 50, gz: bool = False, seed: int = 0
) -> dict[str, np.ndarray]:
    """Small NORB files (dat, cat, info per split). Returns the left-camera images and the
    labels the loader must give back. The right image of each pair is different (its
    inverse), so picking the wrong one shows; image 0 has a marker at its top-left; the test
    file's pixels differ from the training file's."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = (np.arange(n) % 5).astype(np.int32)
        rng.shuffle(labels)
        left = _block_images(rng, labels, (96, 96))
        left[0, :4, :4] = 255  # top-left marker, and the far corner black
        left[0, -4:, -4:] = 0
        if split == "test":
            left[:, -1, :] = 17  # a last row only the testing file has
        pairs = np.stack([left, 255 - left], axis=1)  # (n, 2, 96, 96)
        info = np.zeros((n, 4), dtype=np.int32)
        folder = root / "smallnorb"
        for kind, array in (("dat", pairs), ("cat", labels), ("info", info)):
            write_norb_matrix(folder / f"{NORB_PREFIX[split]}-{kind}.mat", array, gz=gz)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = left, labels.astype(np.int64)
    return arrays


def fabricate_cifar10(
    root: Path, per_batch: int = 40, n_test: int = 50, seed: int = 0
) -> dict[str, np.ndarray]:
    """CIFAR-10 python pickles (5 training batches, test_batch, batches.meta) as published:
    `data` n x 3072 uint8 channel-major (all red, then green, then blue, each row-major).
    Image 0 of the training set is red at its top-left only and green at its bottom-right
    only. Returns (N, 3, 32, 32) images and labels."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(n: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
        labels = ((np.arange(n) + offset) % 10).astype(np.int64)
        images = _block_images(rng, labels, (3, 32, 32))
        return images, labels

    train = [batch(per_batch, i) for i in range(5)]
    train[0][0][0] = 0
    train[0][0][0, 0, :3, :3] = 255  # red, top-left
    train[0][0][0, 1, -3:, -3:] = 255  # green, bottom-right
    test = batch(n_test, 0)
    names = [f"data_batch_{i}" for i in range(1, 6)]
    for name, (images, labels) in [*zip(names, train, strict=True), ("test_batch", test)]:
        entry = {
            "batch_label": name,
            "labels": labels.tolist(),
            "data": images.reshape(len(images), 3072),
            "filenames": [f"{name}_{i}.png" for i in range(len(images))],
        }
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": per_batch}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return {
        "train_images": np.concatenate([images for images, _ in train]),
        "train_labels": np.concatenate([labels for _, labels in train]),
        "test_images": test[0],
        "test_labels": test[1],
    }


def write_job(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body).lstrip(), encoding="utf-8")
    return path


@pytest.fixture
def digits_job(tmp_path: Path) -> Path:
    """A small real sweep on the bundled digits: 4 quick cells."""
    return write_job(
        tmp_path / "digits.toml",
        """
        name = "digits-test"
        [grid]
        depth = [1, 2]
        seed = [0, 1]
        [params]
        method = "standard"
        dataset = "digits"
        width = 32
        epochs = 2
        batch_size = 20
        lr = 0.05
        train_limit = 400
        [resources]
        memory_gb = 0.5
    """,
    )
