"""The dense optimizers are torch's fastest correct CPU updates (methods/base.py), and every
row says which implementation ran (`optimizer_implementation`)."""

from __future__ import annotations

import pytest
import torch

from methods.base import TrainSettings, make_dense_optimizer, optimizer_implementation


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.ReLU(), torch.nn.Linear(30, 5))


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    for _ in range(50):
        x = torch.randn(1, 20, generator=generator)
        y = torch.randint(0, 5, (1,), generator=generator)
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize(("name", "expected"), [("adam", "adam:fused"), ("sgd", "sgd:for-loop")])
def test_the_dense_update_is_torchs_reference_arithmetic(name: str, expected: str) -> None:
    """Adam's fused kernel follows torch's for-loop Adam to rounding (float32: a few ulps over
    50 steps, far below what a wrong step size or bias correction would move); SGD is the
    for-loop update itself, bit for bit."""
    settings = TrainSettings(lr=1e-2, optimizer=name, momentum=0.0, batch_size=1)
    model = _mlp()
    chosen = make_dense_optimizer(model.parameters(), settings)
    assert optimizer_implementation(chosen) == expected
    ours = _train(model, chosen)
    reference_model = _mlp()
    kind = torch.optim.Adam if name == "adam" else torch.optim.SGD
    reference = _train(reference_model, kind(reference_model.parameters(), lr=1e-2, foreach=False))
    start = torch.cat([p.detach().flatten() for p in _mlp().parameters()])
    moved = (reference - start).abs().max().item()
    assert moved > 1e-2  # the weights did move: the comparison means something
    if name == "sgd":
        assert torch.equal(ours, reference)
    else:
        assert (ours - reference).abs().max().item() < 1e-5 * moved


def test_every_method_records_the_implementation_it_ran() -> None:
    import methods
    from methods.base import Architecture

    arch = Architecture(in_features=20, width=64, depth=2, classes=5)
    found = {}
    for method, optimizer in [
        ("standard", "adam"),
        ("adaptive_dropout", "sgd"),
        ("mc_approx", "sgd"),
        ("dropout", "sgd"),
        ("alsh_approx", "adam"),
    ]:
        from methods.registry import METHODS

        hyper = {p.name: p.default for p in METHODS[method].params}
        model = methods.build(
            method, arch, hyper, torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
        )
        for batch in (1, 20):
            settings = TrainSettings(lr=1e-2, optimizer=optimizer, momentum=0.0, batch_size=batch)
            found[method, batch] = optimizer_implementation(model.make_optimizer(settings))
    assert found == {
        ("standard", 1): "adam:fused",
        ("standard", 20): "adam:fused",
        ("adaptive_dropout", 1): "sgd:for-loop",
        ("adaptive_dropout", 20): "sgd:for-loop",
        ("mc_approx", 1): "sgd:factored-weights+tracked-norms",
        ("mc_approx", 20): "sgd:factored-weights+tracked-norms",
        ("dropout", 1): "sgd:lazy-foreach",
        ("dropout", 20): "sgd:lazy-foreach",
        # A single example goes through methods/sparse_kernels.py, a mini-batch through torch.
        ("alsh_approx", 1): "adam:lazy-compiled",
        ("alsh_approx", 20): "adam:lazy-fused",
    }
