"""Shared fixtures: tiny datasets in the real on-disk formats, a network guard, job files."""

from __future__ import annotations

import ipaddress
import os
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
