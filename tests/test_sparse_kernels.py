"""The compiled single-example step (methods/sparse_kernels.py) against the torch path of
methods/sparse.py on the same active sets: the same log-probabilities, block gradients and
updates (SGD, SGD with momentum, lazy Adam) up to float32 rounding, nothing written outside
the step's blocks, and bit-for-bit repeatable; and ALSH-APPROX's compiled random generator
against the algorithm's definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from methods import alsh_select
from methods.base import Architecture, TrainSettings
from methods.sparse import ActiveUnits, SparseMLP
from tests.method_helpers import build, gen

ARCH = Architecture(in_features=30, width=40, depth=3, classes=5)
STEPS = 5


class FixedSets(SparseMLP):
    """Active units given per step and layer (the same for both paths)."""

    def __init__(self, sets: list[list[np.ndarray]], compiled: bool):
        super().__init__(ARCH, gen(0), gen(1))
        self.sets = sets
        self.compiled_single = compiled

    def _units(self, layer: int) -> np.ndarray:
        return self.sets[self._steps - 1][layer]

    def active_for_layer(
        self, layer: int, h: torch.Tensor, prev: torch.Tensor | None, record: bool
    ) -> ActiveUnits:
        return ActiveUnits(torch.from_numpy(self._units(layer)), 1.0)

    def single_active(self, layer: int, h: np.ndarray, prev: np.ndarray | None) -> np.ndarray:
        return self._units(layer)


def random_sets(seed: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        [np.sort(rng.choice(ARCH.width, size=rng.integers(5, 12), replace=False)) for _ in "abc"]
        for _ in range(STEPS)
    ]


SETTINGS = {
    "adam": TrainSettings(lr=1e-2, optimizer="adam", momentum=0.0, batch_size=1),
    "sgd": TrainSettings(lr=5e-2, optimizer="sgd", momentum=0.0, batch_size=1),
    "sgd-momentum": TrainSettings(lr=5e-2, optimizer="sgd", momentum=0.9, batch_size=1),
}


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = gen(5)
    x = torch.randn(STEPS, ARCH.in_features, generator=g)
    x *= torch.rand(STEPS, ARCH.in_features, generator=g) < 0.6  # zero features, as in images
    return x, torch.randint(0, ARCH.classes, (STEPS,), generator=g)


@pytest.mark.parametrize("optimizer", sorted(SETTINGS))
def test_compiled_step_equals_the_torch_step(optimizer: str) -> None:
    """Catches a wrong relu mask, a lost bias gradient, a block gathered from the wrong
    columns, a log-softmax backward without the softmax term, Adam's bias correction on the
    wrong step, a momentum buffer read from the wrong entries: each moves a value by far more
    than the float32 rounding both paths differ by (sums in another order)."""
    sets = random_sets(1)
    compiled, reference = FixedSets(sets, compiled=True), FixedSets(sets, compiled=False)
    opts = [m.make_optimizer(SETTINGS[optimizer]) for m in (compiled, reference)]
    assert opts[0].implementation().endswith("compiled")
    assert not opts[1].implementation().endswith("compiled")
    x, y = data()
    for m in (compiled, reference):
        m.train()
    close = {"rtol": 1e-5, "atol": 1e-6}
    for step in range(STEPS):
        if step == 2:  # a forward pass without its backward pass (a loss that was not finite)
            for m in (compiled, reference):
                m(x[step + 1 : step + 2])  # another example, never back-propagated
                m._steps -= 1  # the next pass draws this step's active sets again
        out = [m(x[step : step + 1]) for m in (compiled, reference)]
        torch.testing.assert_close(out[0], out[1], **close)
        for o, logp in zip(opts, out, strict=True):
            o.zero_grad()
            F.nll_loss(logp, y[step : step + 1]).backward()
        blocks = [compiled.blocks, reference.blocks]
        assert len(blocks[0]) == len(blocks[1]) == 2 * (ARCH.depth + 1)
        for a, b in zip(*blocks, strict=True):
            assert a.param is not b.param and a.param.shape == b.param.shape
            for ia, ib in ((a.where.rows, b.where.rows), (a.where.cols, b.where.cols)):
                assert (ia is None and ib is None) or torch.equal(ia, ib)  # type: ignore[arg-type]
            torch.testing.assert_close(a.leaf, b.leaf, **close)
            assert a.leaf.grad is not None and b.leaf.grad is not None
            torch.testing.assert_close(a.leaf.grad, b.leaf.grad, **close)
        for o in opts:
            o.step()
        assert opts[0].updated_elements == opts[1].updated_elements > 0
        for pa, pb in zip(compiled.parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-6)
        for name, state in opts[0].state.items():
            torch.testing.assert_close(state, opts[1].state[name], rtol=1e-4, atol=1e-7)
    start = FixedSets(sets, compiled=True)
    moved = max(
        float((p.detach() - q.detach()).abs().max())
        for p, q in zip(compiled.parameters(), start.parameters(), strict=True)
    )
    assert moved > 1e-2  # the comparison is between weights that did move


@pytest.mark.parametrize("optimizer", sorted(SETTINGS))
def test_compiled_step_writes_only_its_blocks(optimizer: str) -> None:
    """Every weight, bias and optimizer-state entry outside a step's blocks is bit for bit
    what it was (lazy updates: no decay of moments outside the block)."""
    sets = random_sets(2)
    model = FixedSets(sets, compiled=True)
    opt = model.make_optimizer(SETTINGS[optimizer])
    model.train()
    x, y = data()
    params = dict(model.named_parameters())
    moved = dict.fromkeys(params, 0)
    for step in range(STEPS):
        before = {n: p.detach().clone() for n, p in params.items()}
        state_before = {n: s.clone() for n, s in opt.state.items()}
        F.nll_loss(model(x[step : step + 1]), y[step : step + 1]).backward()
        opt.step()
        rows: list[np.ndarray | None] = [*sets[step], None]  # output layer: every class
        cols: list[np.ndarray | None] = [None, *sets[step]]  # first layer: every input
        for i in range(ARCH.depth + 1):
            for kind in ("weight", "bias"):
                name = f"layers.{i}.{kind}"
                shape = tuple(params[name].shape)
                r = np.arange(shape[0]) if rows[i] is None else rows[i]
                inside_np = np.zeros(shape, dtype=bool)
                if kind == "weight":
                    inside_np[np.ix_(r, np.arange(shape[1]) if cols[i] is None else cols[i])] = True
                else:
                    inside_np[r] = True
                inside = torch.from_numpy(inside_np)
                outside = ~inside
                assert torch.equal(params[name].detach()[outside], before[name][outside]), name
                if name in opt.state:
                    state = opt.state[name]
                    mask = outside.expand(*state.shape[: state.dim() - outside.dim()], *shape)
                    assert torch.equal(state[mask], state_before[name][mask]), name
                moved[name] += int((params[name].detach()[inside] != before[name][inside]).sum())
    assert all(moved.values()), moved  # every layer's blocks did move (not a vacuous check)


def test_alsh_compiled_training_is_repeatable_bit_for_bit() -> None:
    """Two ALSH-APPROX runs from the same seeds: the same weights, moments and generator
    state, to the bit (fixed summation order, no fast-math)."""
    arch = Architecture(in_features=30, width=200, depth=2, classes=5)
    g = gen(8)
    x, y = torch.randn(60, 30, generator=g), torch.randint(0, 5, (60,), generator=g)
    runs = []
    for _ in range(2):
        model = build("alsh_approx", arch)
        opt = model.make_optimizer(SETTINGS["adam"])
        model.train()
        for i in range(60):
            F.nll_loss(model(x[i : i + 1]), y[i : i + 1]).backward()
            opt.step()
            model.upkeep(i + 1, i + 1)
        runs.append((model.state_dict(), opt.state_dict()))
    (m1, o1), (m2, o2) = runs
    for key, value in m1.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, m2[key]), key
    assert torch.equal(m1["_extra_state"]["hash_rng"], m2["_extra_state"]["hash_rng"])
    for name, state in o1["state"].items():
        assert torch.equal(state, o2["state"][name]), name


def _xoshiro_reference(state: list[int], n: int) -> list[int]:
    """xoshiro256** as its authors define it (prng.di.unimi.it/xoshiro256starstar.c)."""
    mask = (1 << 64) - 1
    s = list(state)

    def rotl(x: int, k: int) -> int:
        return ((x << k) | (x >> (64 - k))) & mask

    out = []
    for _ in range(n):
        out.append(rotl((s[1] * 5) & mask, 7) * 9 & mask)
        t = (s[1] << 17) & mask
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
    return out


def test_the_generator_is_xoshiro256_starstar() -> None:
    state = alsh_select.seed_state(12345)
    expected = _xoshiro_reference([int(w) for w in state], 20)
    got = [int(alsh_select.next_u64(state)) for _ in range(20)]
    assert got == expected
    # SplitMix64's first output from seed 0 (its published reference value).
    assert int(alsh_select.seed_state(0)[0]) == 0xE220A8397B1DCDAF


def test_bounded_draws_are_uniform() -> None:
    """60000 draws in [0, 6): Pearson's chi-square (5 degrees of freedom) below 35.9, its
    1e-6 upper quantile (a false alarm once in a million seeds)."""
    state = alsh_select.seed_state(7)
    draws = np.array([alsh_select.below(state, 6) for _ in range(60_000)])
    assert draws.min() >= 0 and draws.max() < 6
    counts = np.bincount(draws, minlength=6)
    expected = 10_000
    assert float(((counts - expected) ** 2 / expected).sum()) < 35.9
