"""Security: files in the results and data folders are never unpickled into code, a job file
is data and never code, text from outside is never taken for terminal markup, and the local
Ray the runner starts listens on loopback only."""

from __future__ import annotations

import ast
import ipaddress
import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runner.cli.main import main
from runner.errors import DatasetError, SpecError
from runner.job.spec import parse_spec
from tests.conftest import REPO, fabricate_cifar10, write_job
from tests.faults import assert_complete, cli_env, digits_job, job_keys, run_cli


class Planted:
    """Unpickling this creates `marker`: a stand-in for any code a planted file could run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


# --- the source never unpickles what it reads ---------------------------------------------------


def _call_name(node: ast.Call) -> str:
    func = node.func
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _keyword(node: ast.Call, name: str) -> Any:
    for keyword in node.keywords:
        if keyword.arg == name:
            return ast.literal_eval(keyword.value)
    return None


def test_no_code_runs_from_files_anywhere_in_the_source() -> None:
    """A guard on every module of runner/ and methods/: no unpickling of any kind but the
    CIFAR reader's restricted one, torch.load only with weights_only=True, numpy never with
    allow_pickle, and no eval / exec at all."""
    forbidden = {
        "pickle.load",
        "pickle.loads",
        "pickle.Unpickler",
        "pd.read_pickle",
        "pandas.read_pickle",
        "marshal.load",
        "marshal.loads",
        "shelve.open",
        "yaml.load",
        "eval",
        "exec",
        "torch.jit.load",
    }
    problems = []
    for path in sorted([*REPO.glob("runner/**/*.py"), *REPO.glob("methods/**/*.py")]):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name, where = _call_name(node), f"{path.relative_to(REPO)}:{node.lineno}"
            if name in forbidden:
                problems.append(f"{where}: {name}")
            if name == "torch.load" and _keyword(node, "weights_only") is not True:
                problems.append(f"{where}: torch.load without weights_only=True")
            if name in ("np.load", "numpy.load") and _keyword(node, "allow_pickle") is not False:
                problems.append(f"{where}: np.load without allow_pickle=False")
        # The one unpickler allowed: a subclass that overrides find_class.
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(
                ast.unparse(base) == "pickle.Unpickler" for base in node.bases
            ):
                methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
                if "find_class" not in methods:
                    problems.append(f"{path.relative_to(REPO)}: {node.name} allows any global")
    assert not problems, problems


# --- planted files --------------------------------------------------------------------------


def test_planted_pickles_in_the_results_folder_never_run(tmp_path: Path) -> None:
    """Pickles where a result, a checkpoint and a failure record belong: nothing runs, the
    planted result is quarantined (not deleted), every cell is computed for real."""
    job = digits_job(tmp_path / "j.toml", "planted", seeds=[0, 1])
    results = tmp_path / "results"
    first, second = sorted(job_keys(job))
    marker = tmp_path / "code-ran"
    payload = pickle.dumps(Planted(marker))
    for folder in ("cells", "checkpoints"):
        (results / folder).mkdir(parents=True)
    (results / "cells" / f"{first}.parquet").write_bytes(payload)
    (results / "checkpoints" / f"{second}.pt").write_bytes(payload)

    args = ["submit", str(job), "--results", str(results), "--executor", "serial"]
    assert main(args) == 0
    assert not marker.exists()
    assert_complete(results, {first, second})
    assert [p.read_bytes() for p in (results / "quarantine").iterdir()] == [payload]


def test_a_planted_cifar_batch_never_runs_even_with_checksums_skipped(tmp_path: Path) -> None:
    """CIFAR-10 batches are pickles by format. A tampered one is refused by name, before
    anything it names is built; the files of the real format still load."""
    from runner.datasets.loading import load_splits

    root = tmp_path / "data"
    fabricate_cifar10(root, per_batch=10, n_test=10)
    batch = root / "cifar-10-batches-py" / "data_batch_2"
    marker = tmp_path / "code-ran"
    batch.write_bytes(pickle.dumps({"data": Planted(marker), "labels": [0]}, protocol=2))
    with pytest.raises(DatasetError) as info:
        load_splits("cifar10", root, split_seed=0, download=False, verify_checksums=False)
    assert not marker.exists()
    message = str(info.value)
    assert f"{batch} is not a CIFAR-10 batch" in message and "io.open" in message
    assert "it was not loaded" in message

    fabricate_cifar10(root, per_batch=10, n_test=10)  # the genuine format, protocol 2
    splits = load_splits("cifar10", root, split_seed=0, download=False, verify_checksums=False)
    assert splits.x_train.shape[1:] == (3072,)


def test_a_prepared_array_holding_a_pickle_is_never_loaded(tmp_path: Path) -> None:
    """A prepared split whose .npy holds objects (numpy pickles those) is treated as damaged
    and prepared again from the official files: nothing in it runs."""
    from runner.datasets.loading import load_splits
    from tests.conftest import MNIST_FILES, fabricate_mnist_like

    root = tmp_path / "data"
    fabricate_mnist_like(root, "MNIST", MNIST_FILES)
    before = load_splits("mnist", root, split_seed=0, download=False, verify_checksums=False)
    [labels] = list(root.glob("prepared/mnist-*/train_labels.npy"))
    marker = tmp_path / "code-ran"
    np.save(labels, np.array([Planted(marker)], dtype=object), allow_pickle=True)
    after = load_splits("mnist", root, split_seed=0, download=False, verify_checksums=False)
    assert not marker.exists()
    assert after.y_train.tolist() == before.y_train.tolist()


# --- job files are data -----------------------------------------------------------------------


def test_nothing_in_a_job_file_is_executed(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    code = f"__import__('os').system('touch {marker}')"
    text = textwrap.dedent(f"""
        name = "{code}"
        description = "{code}"
        [grid]
        seed = ["{code}"]
        [params]
        method = "{code}"
        dataset = "digits"
        lr = "{code}"
        [methods.dropout]
        keep = "{code}"
        [[override]]
        where = {{ depth = 1 }}
        set = {{ width = "{code}" }}
    """)
    with pytest.raises(SpecError) as info:
        parse_spec(text, "evil.toml")
    problems = "\n".join(info.value.problems)
    for key in ("name:", "grid.seed[0]:", "params.method:", "params.lr:"):
        assert key in problems
    assert "methods.dropout.keep:" in problems and "override[0].set.width:" in problems
    assert not marker.exists()


def test_a_job_name_cannot_leave_the_results_folder(tmp_path: Path) -> None:
    for name in ("../outside", "/etc", "a/b", ".hidden", ""):
        with pytest.raises(SpecError, match="name: "):
            parse_spec(f'name = "{name}"\n[params]\nmethod = "standard"\ndataset = "digits"\n')


def test_text_from_files_is_printed_as_is_never_as_markup(tmp_path: Path) -> None:
    """Job values, exception messages and file names reach the terminal through rich, whose
    markup a stray "[/x]" breaks: they are printed literally, errors without a traceback."""
    job = write_job(
        tmp_path / "markup.toml",
        """
        name = "markup"
        [grid]
        method = ["[/x]", "[red]standard"]
        [params]
        dataset = "digits"
        """,
    )
    code, output = run_cli(["plan", str(job)], cwd=tmp_path)
    assert code == 2, output
    assert "Traceback" not in output
    assert "grid.method[0]: '[/x]' is not one of" in output
    assert "grid.method[1]: '[red]standard' is not one of" in output


# --- the local Ray listens on loopback only -----------------------------------------------------

_LISTENERS = """
import json, os, sys
from runner.run.executors import RayExecutor
from runner.job.spec import Resources

executor = RayExecutor(Resources(memory_gb=0.5), None, 1, None, False)
import ray
import psutil  # Ray ships it

ray.get(ray.remote(lambda: os.getpid()).remote())  # a worker process listens too
me = psutil.Process()
listening = []
for process in [me, *me.children(recursive=True)]:
    try:
        for conn in process.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                listening.append([process.name(), conn.laddr.ip, conn.laddr.port])
    except psutil.Error:
        pass
print(json.dumps({"where": executor.describe(), "listening": listening}))
executor.close()
"""


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


@pytest.mark.ray
@pytest.mark.slow
def test_the_local_ray_listens_on_loopback_only(tmp_path: Path) -> None:
    """As a user runs it: nothing in the environment asks for loopback (tests/conftest.py
    sets that for the test process; it is removed here), yet no Ray process of the local
    instance listens anywhere but on 127.0.0.1 / ::1, and there is no dashboard."""
    env = cli_env()
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    done = subprocess.run(
        [sys.executable, "-c", _LISTENERS],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        start_new_session=True,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert "loopback only" in found["where"]
    names = {name for name, _, _ in found["listening"]}
    assert {"gcs_server", "raylet"} <= names, found  # the check saw Ray's servers
    exposed = [entry for entry in found["listening"] if not _is_loopback(entry[1])]
    assert not exposed, exposed
    assert 8265 not in {port for _, _, port in found["listening"]}, "the dashboard is up"
