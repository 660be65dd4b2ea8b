"""The sampling methods' mathematics, checked against calculations made here, independently.

Every test names the plausible mistake it catches (tests/mutants/run_method_mutants.py plants
each of them and checks that this file fails). Statistical tests state their false-alarm rate:
the probability that a correct implementation fails them. Every draw is seeded, so a given
version of the code passes or fails deterministically; the rate says how unlucky a seed would
have to be for a correct implementation to fail.

Every hyperparameter a test depends on is set explicitly (`hyper`): the registry's defaults may
change without these tests changing meaning.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import methods
from methods import alsh_approx, mc_approx
from methods.base import Architecture, MethodModel, TrainSettings
from methods.registry import METHODS
from methods.sparse import Block, SparseMLP
from tests.method_helpers import gen

# Family-wise false-alarm rate of each frequency test (Bernstein's inequality, union bound).
ALPHA = 1e-6
# Unbiasedness tests: |T| above this fails; for T ~ N(0, 1) the two-sided tail is 9.6e-7.
T_LIMIT = 4.9
# ...and each draws enough estimates that a relative bias of BIAS shifts T by >= BIAS_SHIFT.
BIAS = 0.1
BIAS_SHIFT = 9.0


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """The machine is shared: torch on one thread, as the project's cells run."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def hyper(method: str, **explicit: Any) -> dict[str, Any]:
    """A complete hyperparameter dict for `method`: the values a test depends on, given
    explicitly (each must be a declared, valid parameter), and the registry's defaults only
    for any parameter the test does not depend on."""
    params = {p.name: p for p in METHODS[method].params}
    unknown = set(explicit) - set(params)
    assert not unknown, f"{method} has no hyperparameters {sorted(unknown)}"
    for name, value in explicit.items():
        problem = params[name].problem(value, f"{method}.{name}")
        assert problem is None, problem
    values = {name: p.default for name, p in params.items()}
    values.update(explicit)
    return values


def build(method: str, arch: Architecture, **explicit: Any) -> MethodModel:
    return methods.build(method, arch, hyper(method, **explicit), gen(0), gen(1))


def train_step(model: MethodModel, optimizer: Any, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = F.nll_loss(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


# --- statistics ---------------------------------------------------------------------------------


def eq8(a_norms: torch.Tensor, b_norms: torch.Tensor, k: int) -> torch.Tensor:
    """Paper Eq. 8, written out here: p_i = min(1, k w_i / sum_j w_j), w_i = |A_i| |B_i|."""
    w = a_norms.double() * b_norms.double()
    return torch.clamp(k * w / w.sum(), max=1.0)


def bernstein_limit(variance: torch.Tensor, tests: int, alpha: float = ALPHA) -> torch.Tensor:
    """The deviation s with P(|K - E K| >= s) <= alpha / tests, for K a sum of independent
    Bernoulli variables of total variance `variance`: Bernstein's inequality
    P(|K - E K| >= s) <= 2 exp(-s^2 / (2 V + 2 s / 3)) (each term within 1 of its mean),
    solved for s. Rigorous, no normal approximation; over `tests` such counts, the union
    bound keeps the family-wise false-alarm rate <= alpha."""
    log_term = math.log(2 * tests / alpha)
    return log_term / 3 + torch.sqrt(log_term**2 / 9 + 2 * variance * log_term)


def check_counts(
    counts: torch.Tensor,
    expected: torch.Tensor,
    variance: torch.Tensor,
    tests: int,
    alternatives: dict[str, torch.Tensor],
    label: str,
) -> None:
    """Kept counts against their expectation (sums of Eq. 8 probabilities), pair by pair;
    pairs of variance 0 (p = 1 or p = 0 at every draw) exactly. And a check of the design:
    each alternative's expected counts (uniform, one factor) would be rejected by a wide
    margin, so a pass means something."""
    certain = variance == 0
    assert torch.equal(counts[certain], expected[certain]), (
        f"{label}: pairs with p = 1 (or 0) kept {counts[certain].tolist()} times, "
        f"expected {expected[certain].tolist()}"
    )
    limit = bernstein_limit(variance, tests)
    excess = (counts - expected).abs() / limit
    worst = int(excess.argmax())
    assert float(excess.max()) < 1.0, (
        f"{label}: pair {worst} kept {float(counts[worst]):.0f} times, Eq. 8 expects "
        f"{float(expected[worst]):.1f} +- {float(limit[worst]):.1f} (false alarm <= {ALPHA:g})"
    )
    for name, alternative in alternatives.items():
        margin = float(((alternative - expected).abs() / limit).max())
        assert margin > 2.0, f"{label}: the design cannot tell Eq. 8 from {name} ({margin:.2f})"


def one_factor_alternatives(
    a_norms: torch.Tensor, b_norms: torch.Tensor, k: int
) -> dict[str, torch.Tensor]:
    """The probabilities of the plausible mistakes: uniform, and Eq. 8 on one factor only."""
    ones_a, ones_b = torch.ones_like(a_norms), torch.ones_like(b_norms)
    return {
        "uniform": eq8(ones_a, ones_b, k),
        "|A[:, i]| only": eq8(a_norms, ones_b, k),
        "|B[i, :]| only": eq8(ones_a, b_norms, k),
    }


class PairLog:
    """Wraps `mc_approx.choose_pairs` (which every sampled product calls): records each call's
    number of pairs and what it returned (kept indices, their 1/p scales; None: all kept)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.calls: list[tuple[int, tuple[torch.Tensor, torch.Tensor] | None]] = []
        real = mc_approx.choose_pairs

        def recording(
            a_norms: torch.Tensor,
            b_norms: torch.Tensor,
            sampling: mc_approx.Sampling,
            generator: torch.Generator | None,
        ) -> tuple[torch.Tensor, torch.Tensor] | None:
            chosen = real(a_norms, b_norms, sampling, generator)
            self.calls.append((a_norms.numel(), chosen))
            return chosen

        monkeypatch.setattr(mc_approx, "choose_pairs", recording)

    def take(self) -> list[tuple[int, tuple[torch.Tensor, torch.Tensor] | None]]:
        calls, self.calls = self.calls, []
        return calls


# --- MC-APPROX: one layer, skewed norms ---------------------------------------------------------

BATCH, FAN_IN, FAN_OUT = 40, 30, 50  # distinct: a product's number of pairs names it
PAIRS = {"forward": FAN_IN, "grad_input": FAN_OUT, "grad_weight": BATCH}
K = 10


def sampling(k: int) -> mc_approx.Sampling:
    """Eq. 8 with k expected pairs, nothing else: no ratio, no uniform mixing."""
    return mc_approx.Sampling(k=k, sample_ratio=0.0, min_k=1, uniform_mix=0.0)


def skewed_problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """W (out, in), X (batch, in) and the upstream gradient dY (batch, out) in float64, with
    norms skewed so that Eq. 8 differs clearly from uniform and from either factor alone, in
    all three products, and some pairs are clamped at p = 1."""
    g = gen(0)
    w = torch.randn(FAN_OUT, FAN_IN, generator=g, dtype=torch.float64) / math.sqrt(FAN_IN)
    w[:10] *= 10  # ten output units' weight rows 10x larger
    w[:, :5] *= 3  # five input features' weight columns 3x larger
    x = torch.randn(BATCH, FAN_IN, generator=g, dtype=torch.float64)
    x[:6] *= 5  # six examples 5x larger
    x[:, 20:25] *= 6  # five input features 6x larger
    dy = torch.randn(BATCH, FAN_OUT, generator=g, dtype=torch.float64)
    dy[:, 5:15] *= 4  # ten output units receive 4x larger gradients
    dy[3:9] *= 3  # six examples receive 3x larger gradients
    return w, x, dy


def mc_layer(mode: str, w: torch.Tensor, k: int) -> mc_approx.MCLinear:
    layer = mc_approx.MCLinear(FAN_IN, FAN_OUT, mode, sampling(k), gen(7)).double()
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(torch.linspace(-1.0, 1.0, FAN_OUT, dtype=torch.float64))
    layer.train()
    return layer


def factors(
    product: str, w: torch.Tensor, x: torch.Tensor, dy: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The product as A B, its pairs (A[:, i], B[i, :]) those MC-APPROX samples:
    grad_input = dY W over the output units, grad_weight = dY^T X over the examples,
    forward = X W^T over the input features."""
    if product == "grad_input":
        return dy, w
    if product == "grad_weight":
        return dy.t(), x
    return x, w.t()


def test_certain_pairs_are_not_rescaled() -> None:
    """Catches: a pair whose Eq. 8 probability is clamped at 1 scaled by the unclamped
    1/(k w_i / sum w) instead of 1 (it is kept every time, so any other scale biases the
    product), and scales other than Eq. 8's 1/p for the rest (1/sqrt(p), or the 1/p of
    uniform or one-factor probabilities: here p = [1, 0.3 x 5], uniform would be 0.5).
    `choose_pairs` called directly. Exact, not statistical."""
    a_norms = torch.tensor([10.0, 1.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    b_norms = torch.tensor([1.0, 2.0, 2.0, 2.0, 2.0, 2.0], dtype=torch.float64)
    # w = [10, 2, 2, 2, 2, 2], sum 20, k = 3: p = [min(1, 1.5), 0.3, 0.3, 0.3, 0.3, 0.3]
    g = gen(0)
    for _ in range(50):
        chosen = mc_approx.choose_pairs(a_norms, b_norms, sampling(3), g)
        assert chosen is not None
        kept, scale = chosen
        assert 0 in kept.tolist()
        for index, s in zip(kept.tolist(), scale.tolist(), strict=True):
            assert s == pytest.approx(1.0 if index == 0 else 1 / 0.3, rel=1e-12), index


@pytest.mark.parametrize("mode", ["backward", "forward"])
def test_mc_layer_keeps_pairs_with_eq8_probabilities(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eq. 8 as training uses it, in one MCLinear layer: in backward mode its input gradient
    dY W (pairs over the output units) and weight gradient dY^T X (over the examples), in
    forward mode its product X W^T (over the input features), with skewed norms (some weight
    rows 10x, some dY columns 4x, ...). Over 2000 passes, each pair's kept count is compared
    with 2000 p_i, p_i from Eq. 8 computed here from the norm products; every returned scale
    must be 1/p_i.

    Catches: pairs chosen uniformly, or by one factor's norms only (|A[:, i]| or |B[i, :]|),
    or by norms of the wrong matrices; scales other than 1/p (e.g. unclamped at p = 1).
    False alarm <= 1e-6 (Bernstein's inequality per pair, union bound over all pairs); the
    test also asserts that uniform and one-factor probabilities would fail it by > 2x its
    tolerance, for every product."""
    w, x, dy = skewed_problem()
    layer = mc_layer(mode, w, K)
    products = ["forward"] if mode == "forward" else ["grad_input", "grad_weight"]
    by_size = {PAIRS[p]: p for p in products}
    norms = {}
    for product in products:
        a, b = factors(product, w, x, dy)
        norms[product] = (a.norm(dim=0), b.norm(dim=1))
    p = {product: eq8(*norms[product], K) for product in products}
    counts = {product: torch.zeros(PAIRS[product], dtype=torch.float64) for product in products}
    scale_error = 0.0
    log = PairLog(monkeypatch)
    draws = 2000
    inputs = x.clone().requires_grad_(True)
    for _ in range(draws):
        if mode == "forward":
            with torch.no_grad():
                layer(x)
        else:
            torch.autograd.grad((layer(inputs) * dy).sum(), (inputs, layer.weight))
        calls = log.take()
        assert sorted(n for n, _ in calls) == sorted(PAIRS[q] for q in products), calls
        for n, chosen in calls:
            assert chosen is not None  # k = 10 < n: every product is sampled
            kept, scale = chosen
            product = by_size[n]
            counts[product] += torch.bincount(kept, minlength=n).double()
            if len(kept):
                error = (scale.double() * p[product][kept] - 1).abs().max()
                scale_error = max(scale_error, float(error))
    assert scale_error < 1e-9, f"kept pairs are not scaled by 1/p (relative error {scale_error})"
    tests = sum(PAIRS[q] for q in products)
    for product in products:
        check_counts(
            counts[product],
            draws * p[product],
            draws * p[product] * (1 - p[product]),
            tests,
            {name: draws * q for name, q in one_factor_alternatives(*norms[product], K).items()},
            f"{mode} mode, {product}",
        )


@pytest.mark.parametrize("product", ["grad_input", "grad_weight", "forward"])
def test_mc_layer_products_are_unbiased(product: str) -> None:
    """Unbiasedness with a stated false-alarm rate, in float64, for backward mode's input
    gradient dY W and weight gradient dY^T X and forward mode's product X W^T of one
    MCLinear layer with skewed norms (some pairs clamped at p = 1).

    One estimate projected on the exact product E, <est, E>, is sum_i Z_i / p_i c_i with
    Z_i ~ Bernoulli(p_i) independent, c_i = <A[:, i] B[i, :], E>: mean sum_i c_i = |E|^2,
    variance V = sum_i (1 - p_i) / p_i c_i^2 exactly. Over n estimates,
    T = (mean projection - |E|^2) / sqrt(V / n) is ~ N(0, 1); the test fails if |T| > 4.9
    (two-sided false alarm 9.6e-7). n is chosen (and asserted) so that a relative bias of
    10% shifts T by >= 9.

    Catches: a gradient or product biased by a constant factor (e.g. grad_w or grad_input
    x 1.1 in `_layer_backward`, the forward estimate x 1.1), clamped pairs scaled by the
    unclamped 1/p, scales of 1/sqrt(p) or 1/(k p) instead of 1/p."""
    w, x, dy = skewed_problem()
    mode = "forward" if product == "forward" else "backward"
    layer = mc_layer(mode, w, K)
    a, b = factors(product, w, x, dy)
    exact = a @ b
    p = eq8(a.norm(dim=0), b.norm(dim=1), K)
    c = (a * (exact @ b.t())).sum(dim=0)  # c_i = <A[:, i] B[i, :], E> = A[:, i] . (E B^T)[:, i]
    assert float(c.sum()) == pytest.approx(float(exact.pow(2).sum()), rel=1e-12)
    variance = float(torch.where(p > 0, (1 - p) / p * c.pow(2), torch.zeros_like(c)).sum())
    target = float(exact.pow(2).sum())
    assert variance > 0 and bool((p >= 1).any())  # sampled, and some pairs clamped at 1
    draws = max(1000, math.ceil((BIAS_SHIFT / BIAS) ** 2 * variance / target**2))
    assert draws <= 20_000, draws  # the design keeps the test fast
    assert BIAS * target / math.sqrt(variance / draws) >= BIAS_SHIFT

    inputs = x.clone().requires_grad_(product == "grad_input")
    total = 0.0
    for _ in range(draws):
        if product == "forward":
            with torch.no_grad():
                estimate = layer(x) - layer.bias  # X W^T, sampled
        else:
            wrt = inputs if product == "grad_input" else layer.weight
            (estimate,) = torch.autograd.grad((layer(inputs) * dy).sum(), (wrt,))
        total += float((estimate * exact).sum())
    t = (total / draws - target) / math.sqrt(variance / draws)
    assert abs(t) < T_LIMIT, (
        f"{product}: mean projection {total / draws:.6g} vs exact {target:.6g}: T = {t:.2f} "
        f"(relative bias {total / draws / target - 1:+.4f})"
    )


# --- MC-APPROX: real training steps -------------------------------------------------------------


def test_mc_training_keeps_output_pairs_with_eq8_probabilities(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Eq. 8 as MC-APPROX training really uses it: 1500 SGD steps of a backward-mode MLP
    (the whole network as one autograd node; plain SGD, so the weight-row norms are tracked
    through the steps rather than re-read), three output units' weight rows 10x larger,
    labels concentrated on two classes (their dY columns dominate), four examples 5x
    larger. For the output layer, whose upstream gradient dL/dlogits is exact, the kept
    counts of its input-gradient pairs (over the classes, |dY[:, i]| |W[i, :]|) and
    weight-gradient pairs (over the examples, |dY[b, :]| |h[b, :]|) are compared with the
    sums over steps of Eq. 8 probabilities computed here, at every step, from the current
    weights in float64.

    Catches: uniform or one-factor probabilities; stale or wrong weight-row norms (e.g.
    the tracked norms not following the SGD steps). False alarm <= 1e-6 (Bernstein's
    inequality for sums of independent Bernoulli variables, union bound over 36 pairs);
    the test asserts that uniform and one-factor probabilities would fail it."""
    classes, batch, k, steps = 12, 24, 4, 1500
    arch = Architecture(in_features=20, width=16, depth=1, classes=classes)
    model = build(
        "mc_approx", arch, mode="backward", k=k, sample_ratio=0.0, min_k=1, uniform_mix=0.0
    )
    assert isinstance(model, mc_approx.MCApprox)
    hidden, output = model.layers
    assert isinstance(hidden, torch.nn.Linear) and isinstance(output, mc_approx.MCLinear)
    with torch.no_grad():
        output.weight[:3] *= 10
    opt = model.make_optimizer(
        TrainSettings(lr=0.05, optimizer="sgd", momentum=0.0, batch_size=batch)
    )
    assert output.track_norms  # the training path: norms tracked through SGD steps
    initial_norms = output.weight.detach().norm(dim=1).clone()
    g = gen(5)
    x = torch.randn(batch, 20, generator=g)
    x[:4] *= 5
    y = torch.randint(0, classes, (batch,), generator=g)
    y[:16] = torch.tensor([5, 6] * 8)
    onehot = F.one_hot(y, classes).double()
    model.train()
    log = PairLog(monkeypatch)
    sizes = {"grad_input": classes, "grad_weight": batch}
    names = ["eq8", "uniform", "|A[:, i]| only", "|B[i, :]| only"]
    expected = {(q, n): torch.zeros(sizes[q], dtype=torch.float64) for q in sizes for n in names}
    variance = {q: torch.zeros(sizes[q], dtype=torch.float64) for q in sizes}
    counts = {q: torch.zeros(sizes[q], dtype=torch.float64) for q in sizes}
    for _ in range(steps):
        with torch.no_grad():  # the output layer's pairs, from the current weights
            w1, b1 = hidden.weight.double(), hidden.bias.double()
            w2, b2 = output.weight.double(), output.bias.double()
            h = torch.relu(x.double() @ w1.t() + b1)
            dy = (torch.softmax(h @ w2.t() + b2, dim=1) - onehot) / batch  # d mean NLL / d logits
            pairs = {
                "grad_input": (dy.norm(dim=0), w2.norm(dim=1)),
                "grad_weight": (dy.norm(dim=1), h.norm(dim=1)),
            }
            for q, (a_norms, b_norms) in pairs.items():
                p = eq8(a_norms, b_norms, k)
                expected[q, "eq8"] += p
                variance[q] += p * (1 - p)
                for name, alt in one_factor_alternatives(a_norms, b_norms, k).items():
                    expected[q, name] += alt
        train_step(model, opt, x, y)
        calls = log.take()
        # Back-propagation starts at the output layer: its products come first.
        for q, n in sizes.items():
            chosen = next(c for size, c in calls if size == n)
            assert chosen is not None
            counts[q] += torch.bincount(chosen[0], minlength=n).double()
    moved = (output.weight.detach().norm(dim=1) / initial_norms - 1).abs().max()
    assert float(moved) > 0.5  # the norms the probabilities use did change (measured: 3.7x)
    tests = classes + batch
    for q in sizes:
        check_counts(counts[q], expected[q, "eq8"], variance[q], tests, {}, f"output {q}")
    # The design: each alternative would fail the test in at least one of the two products.
    for name in names[1:]:
        margins = [
            float(
                (
                    (expected[q, name] - expected[q, "eq8"]).abs()
                    / bernstein_limit(variance[q], tests)
                ).max()
            )
            for q in sizes
        ]
        assert max(margins) > 2.0, f"the design cannot tell Eq. 8 from {name}: {margins}"


# --- ALSH-APPROX ----------------------------------------------------------------------------------


def table_codes(tables: alsh_approx.LayerTables) -> np.ndarray:
    """(units, L): the bucket each unit sits in, per table, read from the tables; every unit
    must sit in exactly one bucket of each table."""
    where = np.full((tables.units, tables.L), -1, dtype=np.int64)
    for t in range(tables.L):
        for code in range(2**tables.K):
            members = tables.bucket(t, code)
            assert (where[members, t] == -1).all(), f"table {t}: a unit in two buckets"
            where[members, t] = code
    assert (where >= 0).all(), "a unit is in no bucket"
    return where


def current_codes(
    tables: alsh_approx.LayerTables, layer: torch.nn.Linear, m: int, U: float, with_bias: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(units, L) signatures of P(w) (P([w; b]) `with_bias`) of the layer's current weights
    under the tables' hyperplanes, computed here in float64 (with `transform_p`, not the
    tables' own projection code); and which (unit, table) signatures are too close to a
    hyperplane (|projection| < 1e-6) to decide under float32 rounding."""
    with torch.no_grad():
        bias = layer.bias.double() if with_bias else None
        transformed = alsh_approx.transform_p(layer.weight.double(), bias, m, U)
        projections = transformed @ tables.planes.double()  # (units, K L)
    codes = tables.signatures((projections > 0).numpy())
    close = (projections.abs() < 1e-6).view(tables.units, tables.L, tables.K).any(dim=2)
    return codes, close.numpy()


@pytest.mark.parametrize("hash_bias", ["ignore", "append"])
def test_alsh_rebuilt_tables_hash_the_current_weights(hash_bias: str) -> None:
    """Catches: scheduled or epoch-end rebuilds that do nothing, leaving tables hashed from
    stale weights (e.g. `LayerTables.rebuild` or `ALSHApprox.rebuild_tables` a no-op after
    the first build). Trains with Adam (lr 0.05) so that the weights move, lets the
    schedule fire (every 5 steps) and the epoch end rebuild, and after every rebuild requires
    every unit of every hidden layer's tables to sit in the bucket of the signature of its
    CURRENT weights. Also asserts that many signatures did change since the first build
    (else stale tables would pass). Exact, not statistical."""
    K, L, m, U = 4, 3, 3, 0.83
    arch = Architecture(in_features=24, width=64, depth=2, classes=4)
    model = build(
        "alsh_approx",
        arch,
        K=K,
        L=L,
        m=m,
        U=U,
        active_fraction=0.1,
        hash_bias=hash_bias,
        active_size="target",
        batch_sets="example",
        rebuild_early=5,
        rebuild_late=5,
        rebuild_switch=10_000,
        rebuild_unit="steps",
    )
    assert isinstance(model, alsh_approx.ALSHApprox)
    with_bias = hash_bias == "append"
    hidden = [layer for layer in model.layers[:-1] if isinstance(layer, torch.nn.Linear)]
    opt = model.make_optimizer(TrainSettings(lr=0.05, optimizer="adam", momentum=0.0, batch_size=8))
    g = gen(3)
    x, y = torch.randn(8, 24, generator=g), torch.randint(0, 4, (8,), generator=g)
    initial = [
        current_codes(t, layer, m, U, with_bias)[0]
        for t, layer in zip(model.tables, hidden, strict=True)
    ]

    def check(when: str) -> float:
        changed = []
        for i, (tables, layer) in enumerate(zip(model.tables, hidden, strict=True)):
            codes, close = current_codes(tables, layer, m, U, with_bias)
            stale = (table_codes(tables) != codes) & ~close
            assert not stale.any(), (
                f"{when}: layer {i + 1}: {int(stale.sum())} (unit, table) pairs sit in the "
                "bucket of an old signature"
            )
            changed.append(float((codes != initial[i]).mean()))
        return min(changed)

    model.train()
    fired = 0
    for step in range(1, 23):
        train_step(model, opt, x, y)
        before = model.rebuilds
        model.upkeep(step, 8 * step)
        if model.rebuilds > before:
            fired += 1
            check(f"after the scheduled rebuild at step {step}")
    assert fired == 4  # steps 5, 10, 15, 20
    before = model.rebuilds
    model.end_epoch()  # two steps since the last rebuild: the epoch end rebuilds
    assert model.rebuilds == before + 1
    assert check("after the epoch-end rebuild") > 0.2  # the weights' signatures did move


# --- DROPOUT ------------------------------------------------------------------------------------


def hidden_blocks(model: SparseMLP) -> list[Block]:
    """The weight blocks of the hidden layers the last training forward pass gathered."""
    by_param = {id(block.param): block for block in model.blocks}
    return [by_param[id(layer.weight)] for layer in model.layers[:-1]]


def dropout_kept_sets(keep: float, width: int, depth: int, steps: int) -> list[list[set[int]]]:
    """Per training forward pass, every hidden layer's kept units (the rows of the weight
    block the pass computed), DROPOUT with one mask per mini-batch."""
    arch = Architecture(in_features=10, width=width, depth=depth, classes=3)
    model = build("dropout", arch, keep=keep, mask="batch")
    assert isinstance(model, SparseMLP)
    model.train()
    x = torch.randn(4, 10, generator=gen(2))
    sets = []
    for _ in range(steps):
        model(x)
        blocks = hidden_blocks(model)
        assert all(b.where.rows is not None for b in blocks)
        sets.append([set(b.where.rows.tolist()) for b in blocks])  # type: ignore[union-attr]
    return sets


def check_overlaps(
    overlaps: dict[str, int], trials: int, p: float, extra_tests: int, what: str
) -> None:
    """Each overlap total is Binomial(trials, p) if the sets are independent Bernoulli(keep)
    draws (p = keep^2): Bernstein's inequality with a union bound over every count tested."""
    tests = len(overlaps) + extra_tests
    limit = float(bernstein_limit(torch.tensor(trials * p * (1 - p)), tests))
    for name, total in overlaps.items():
        assert abs(total - trials * p) < limit, (
            f"{what} {name}: {total} units in both, independent draws give "
            f"{trials * p:.0f} +- {limit:.0f} (false alarm <= {ALPHA:g})"
        )


def test_dropout_layers_draw_independent_kept_sets() -> None:
    """Catches: the same kept units in every hidden layer (one Bernoulli draw reused for all
    layers, or layers seeded alike). Through 20 training forward passes (width 1000,
    keep 0.2, 3 hidden layers), the kept sets of each pair of layers in one step must
    overlap like independent Bernoulli(keep) draws: in total Binomial(20 x 1000, keep^2),
    800 expected, not 4000 (identical sets). Also each layer's kept count is
    Binomial(20 x 1000, keep). False alarm <= 1e-6 (Bernstein, union bound over 6 counts)."""
    keep, width, steps = 0.2, 1000, 20
    sets = dropout_kept_sets(keep, width, depth=3, steps=steps)
    overlaps = {
        f"layers {i + 1} and {j + 1}": sum(len(s[i] & s[j]) for s in sets)
        for i, j in ((0, 1), (1, 2), (0, 2))
    }
    check_overlaps(overlaps, steps * width, keep**2, extra_tests=3, what="same step,")
    kept = {f"layer {i + 1} kept": sum(len(s[i]) for s in sets) for i in range(3)}
    check_overlaps(kept, steps * width, keep, extra_tests=3, what="")


def test_dropout_steps_draw_fresh_kept_sets() -> None:
    """Catches: the same kept units at every step (a mask drawn once, or a generator
    re-seeded per step or per layer). Over 21 training forward passes, the kept sets of one
    layer in consecutive steps must overlap like independent Bernoulli(keep) draws:
    Binomial(20 x 1000, keep^2) per layer. False alarm <= 1e-6 (Bernstein, union bound)."""
    keep, width, steps = 0.2, 1000, 21
    sets = dropout_kept_sets(keep, width, depth=2, steps=steps)
    overlaps = {
        f"layer {i + 1}": sum(len(a[i] & b[i]) for a, b in itertools.pairwise(sets))
        for i in range(2)
    }
    check_overlaps(overlaps, (steps - 1) * width, keep**2, extra_tests=0, what="consecutive steps,")


# --- sparse blocks: exact shapes and FLOPs ------------------------------------------------------

ALSH_HYPER = {
    "K": 6,
    "L": 5,
    "m": 3,
    "U": 0.83,
    "active_fraction": 0.05,
    "hash_bias": "ignore",
    "active_size": "target",
    "rebuild_early": 100,
    "rebuild_late": 1000,
    "rebuild_switch": 10_000,
    "rebuild_unit": "examples",
}
SPARSE_CASES = [  # method, its hyperparameters, optimizer
    pytest.param("dropout", {"keep": 0.1, "mask": "batch"}, "sgd", id="dropout"),
    pytest.param("alsh_approx", {**ALSH_HYPER, "batch_sets": "example"}, "adam", id="alsh-example"),
    pytest.param("alsh_approx", {**ALSH_HYPER, "batch_sets": "union"}, "adam", id="alsh-union"),
]


def matmul_flops(fn: Callable[[], Any]) -> int:
    """The matrix-multiply FLOPs (2 m n k per product) torch counts while `fn` runs."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


@pytest.mark.parametrize(("method", "explicit", "optimizer"), SPARSE_CASES)
def test_sparse_step_computes_exactly_the_active_blocks(
    method: str, explicit: dict[str, Any], optimizer: str
) -> None:
    """Catches: a sparse layer computed as active rows x ALL columns (or all rows), i.e. the
    weight block of hidden layer i not exactly W_i[S_i, S_{i-1}], or any dense product left
    in the step. One training step of DROPOUT (one mask per batch) and ALSH-APPROX (each
    example on its own units, or on the batch's union):
    every gathered block has exactly the shape and the values of W_i[S_i, S_{i-1}]
    (|S_i| x |S_{i-1}|, S_0 all inputs; output layer W[:, S_last]), and the step's matrix
    multiplies cost exactly, with s_i = |S_i| (s_0 = inputs, s_{D+1} = classes), batch B:
    forward 2 B sum_{i=1..D+1} s_{i-1} s_i; backward the same for the weight gradients plus
    2 B sum_{i=2..D+1} s_{i-1} s_i for the input gradients (the network's input needs none);
    the optimizer step none. Exact, not statistical."""
    arch = Architecture(in_features=40, width=200, depth=3, classes=7)
    model = build(method, arch, **explicit)
    assert isinstance(model, SparseMLP)
    batch = 5
    opt = model.make_optimizer(
        TrainSettings(lr=1e-3, optimizer=optimizer, momentum=0.0, batch_size=batch)
    )
    g = gen(4)
    x, y = torch.randn(batch, 40, generator=g), torch.randint(0, 7, (batch,), generator=g)
    model.train()
    train_step(model, opt, x, y)  # a first step builds ALSH's tables (upkeep, not counted)
    model.upkeep(1, batch)

    out: list[torch.Tensor] = []
    forward = matmul_flops(lambda: out.append(F.nll_loss(model(x), y)))
    hidden = model.layers[:-1]
    output = model.layers[-1]
    assert isinstance(output, torch.nn.Linear)
    sizes = [arch.in_features]
    prev: torch.Tensor | None = None
    for i, (layer, block) in enumerate(zip(hidden, hidden_blocks(model), strict=True)):
        assert isinstance(layer, torch.nn.Linear)
        rows = block.where.rows
        assert rows is not None and rows.numel() > 0
        assert torch.equal(rows, rows.unique()), "active units must be sorted and distinct"
        expected = layer.weight.detach()[rows]
        if prev is None:
            assert block.where.cols is None  # the first layer reads every input feature
        else:
            assert block.where.cols is not None and torch.equal(block.where.cols, prev)
            expected = expected[:, prev]
        assert tuple(block.leaf.shape) == (len(rows), sizes[-1]), f"layer {i + 1}'s block"
        assert torch.equal(block.leaf.detach(), expected)
        bias = next(b for b in model.blocks if b.param is layer.bias)
        assert bias.where.rows is not None and torch.equal(bias.where.rows, rows)
        sizes.append(len(rows))
        prev = rows
    last = next(b for b in model.blocks if b.param is output.weight)
    assert prev is not None and last.where.rows is None and last.where.cols is not None
    assert torch.equal(last.where.cols, prev)
    assert torch.equal(last.leaf.detach(), output.weight.detach()[:, prev])
    sizes.append(arch.classes)

    products = [a * b for a, b in itertools.pairwise(sizes)]
    assert forward == 2 * batch * sum(products), (forward, sizes)
    backward = matmul_flops(lambda: out[0].backward())
    assert backward == 2 * batch * (sum(products) + sum(products[1:])), (backward, sizes)
    assert matmul_flops(opt.step) == 0
    # A small share of a dense step's products.
    assert forward < 0.2 * 2 * batch * sum(a * b for a, b in arch.layer_sizes())
