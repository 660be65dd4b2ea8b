"""The four sampling methods against exact references (micrograd-style: same inputs through
the method and through STANDARD / dense math). ALSH-APPROX's own tests: test_alsh_approx.py."""

from __future__ import annotations

from copy import deepcopy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import methods
from methods import alsh_approx, mc_approx, mc_approx_conv
from methods.base import Architecture, TrainSettings, optimizer_implementation
from tests.method_helpers import build, gen, train_steps

SMALL = Architecture(in_features=20, width=16, depth=3, classes=5)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = gen(42)
    return torch.randn(7, 20, generator=g), torch.randint(0, 5, (7,), generator=g)


# --- methods that must reduce to STANDARD ---------------------------------------------------

EQUIVALENT_TO_STANDARD = [
    ("dropout", {"keep": 1.0, "mask": "batch"}),
    ("dropout", {"keep": 1.0, "mask": "sample"}),
    ("adaptive_dropout", {"beta": 100.0}),  # keep probability sigmoid(z + 100) = 1
    ("alsh_approx", {"active_fraction": 1.0}),  # every unit active
    ("mc_approx", {"sample_ratio": 0.0, "k": 10_000}),  # k covers every pair: all exact
    ("mc_approx", {"sample_ratio": 0.0, "k": 10_000, "mode": "forward"}),
    ("mc_approx", {"sample_ratio": 1.0}),  # a ratio of 1 keeps every pair too
]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize(("method", "hyper"), EQUIVALENT_TO_STANDARD)
def test_degenerate_setting_equals_standard(
    method: str, hyper: dict[str, Any], optimizer: str, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = batch
    settings = TrainSettings(lr=0.01, optimizer=optimizer, momentum=0.0, batch_size=len(y))
    reference = build("standard", SMALL)
    model = build(method, SMALL, **hyper)
    # Same initial weights (same generator), same first forward pass and gradients...
    for (_, p), (_, q) in zip(reference.named_parameters(), model.named_parameters(), strict=True):
        assert torch.equal(p, q)
    reference.train()
    model.train()
    out_ref, out = reference(x), model(x)
    torch.testing.assert_close(out, out_ref, rtol=1e-6, atol=1e-6)
    # ...and the same weights after several optimizer steps.
    losses_ref = train_steps(reference, settings, x, y, steps=5)
    losses = train_steps(model, settings, x, y, steps=5)
    assert losses == pytest.approx(losses_ref, rel=1e-5)
    for (_, p), (_, q) in zip(reference.named_parameters(), model.named_parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sparse_sgd_with_momentum_matches_torch_when_all_active(
    momentum: float, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = batch
    settings = TrainSettings(lr=0.01, optimizer="sgd", momentum=momentum, batch_size=7)
    reference, model = build("standard", SMALL), build("dropout", SMALL, keep=1.0)
    train_steps(reference, settings, x, y, steps=4)
    train_steps(model, settings, x, y, steps=4)
    for p, q in zip(reference.parameters(), model.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("method", ["dropout", "adaptive_dropout", "alsh_approx", "mc_approx"])
def test_evaluation_is_deterministic_and_exact(
    method: str, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, _ = batch
    model = build(method, SMALL)
    model.eval()
    with torch.no_grad():
        first, second = model(x), model(x)
    assert torch.equal(first, second)
    if method != "adaptive_dropout":  # standout evaluates the expectation pi * relu(z)
        reference = build("standard", SMALL)
        reference.eval()
        with torch.no_grad():
            torch.testing.assert_close(first, reference(x))


# --- DROPOUT ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", ["batch", "sample"])
def test_dropout_keep_rate_matches_the_parameter(mask: str) -> None:
    arch = Architecture(in_features=10, width=1000, depth=2, classes=3)
    model = build("dropout", arch, keep=0.05, mask=mask)
    model.train()
    x = torch.randn(4, 10, generator=gen(3))
    for _ in range(200):
        model(x)
    stats = model.epoch_stats()
    # 200 draws x 1000 units (x 4 examples per-sample): binomial std of the mean < 0.0016.
    for layer in (1, 2):
        assert stats[f"keep_rate.layer{layer}"] == pytest.approx(0.05, abs=0.005)
    if mask == "batch":
        assert stats["active_units.layer1"] == pytest.approx(50, abs=5)


def test_dropout_scales_kept_units_by_inverse_keep() -> None:
    arch = Architecture(in_features=6, width=400, depth=1, classes=2)
    model = build("dropout", arch, keep=0.25)
    assert isinstance(model, methods.dropout.BatchMaskDropout)
    x = torch.randn(3, 6, generator=gen(5))
    model.train()
    with torch.no_grad():
        ((h, active, _),) = model.sparse_hidden(x, record=False)
        exact = model.dense_hidden(x)[0]
    torch.testing.assert_close(h, exact[:, active] / 0.25)


# --- ADAPTIVE-DROPOUT (standout) ----------------------------------------------------------------


def test_standout_keeps_about_five_percent_at_initialisation() -> None:
    """The default beta is chosen for a 5% mean keep rate at initialisation (paper §9.4) on
    standardised MNIST-shaped inputs (784 features, width 1000, 3 layers)."""
    arch = Architecture(in_features=784, width=1000, depth=3, classes=10)
    model = build("adaptive_dropout", arch)
    model.train()
    x = torch.randn(64, 784, generator=gen(7))  # standardised pixels: mean 0, variance 1
    with torch.no_grad():
        for start in range(0, 64, 16):
            model(x[start : start + 16])
    stats = model.epoch_stats()
    rates = [stats[f"keep_rate.layer{i}"] for i in (1, 2, 3)]
    assert all(0.035 < r < 0.065 for r in rates), rates
    assert sum(rates) / 3 == pytest.approx(0.05, abs=0.006)


def test_standout_evaluates_the_expectation(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, _ = batch
    model = build("adaptive_dropout", SMALL, alpha=0.5, beta=0.2)
    assert isinstance(model, methods.adaptive_dropout.Standout)
    model.eval()
    h = x
    with torch.no_grad():
        for layer in model.layers[:-1]:
            z = layer(h)
            h = torch.sigmoid(0.5 * z + 0.2) * F.relu(z)
        expected = F.log_softmax(model.layers[-1](h), dim=1)
        torch.testing.assert_close(model(x), expected)


def test_standout_reports_a_diverged_network_instead_of_crashing(
    batch: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """Once a run diverges its pre-activations are NaN; the sampled mask must not raise
    (torch.bernoulli refuses NaN probabilities): the loss is NaN, so the trainer records
    the cell as diverged. Finite networks draw exactly the same masks as before."""
    x, y = batch
    model = build("adaptive_dropout", SMALL)
    twin = build("adaptive_dropout", SMALL)
    model.train()
    twin.train()
    torch.testing.assert_close(model(x), twin(x), rtol=0, atol=0)  # same draws when finite
    with torch.no_grad():
        model.layers[1].weight[0, 0] = float("nan")
    loss = F.nll_loss(model(x), y)
    assert torch.isnan(loss)


# --- MC-APPROX ----------------------------------------------------------------------------------


def test_keep_probabilities_follow_eq_8() -> None:
    a = torch.tensor([1.0, 2.0, 0.0, 4.0])
    b = torch.tensor([1.0, 1.0, 5.0, 2.0])
    p = mc_approx.keep_probabilities(a, b, k=2)
    # w = [1, 2, 0, 8], sum 11: min(1, 2 w / 11)
    torch.testing.assert_close(p, torch.tensor([2 / 11, 4 / 11, 0.0, 1.0]))
    mixed = mc_approx.keep_probabilities(a, b, k=2, uniform_mix=0.1)
    share = 0.9 * torch.tensor([1, 2, 0, 8]) / 11 + 0.1 / 4
    torch.testing.assert_close(mixed, (2 * share).clamp(max=1.0))


def test_keeping_every_pair_is_the_exact_product() -> None:
    a, b = torch.randn(6, 9, generator=gen(1)), torch.randn(9, 4, generator=gen(2))
    estimate, kept = mc_approx.sampled_matmul(a, b, mc_approx.Sampling(k=9), gen(3))
    assert kept == 9 and torch.equal(estimate, a @ b)
    ratio = mc_approx.Sampling(k=1, sample_ratio=1.0, min_k=1)
    estimate, kept = mc_approx.sampled_matmul(a, b, ratio, gen(3))
    assert kept == 9 and torch.equal(estimate, a @ b)


def test_sampled_product_is_unbiased_within_its_variance() -> None:
    """The mean of N seeded estimates converges to A B: every entry within 5 standard errors,
    the standard error derived from the estimator's exact variance
    Var[est_ij] = sum_t (1 - p_t) / p_t (A_it B_tj)^2."""
    a = torch.randn(5, 40, generator=gen(10), dtype=torch.float64)
    b = torch.randn(40, 3, generator=gen(11), dtype=torch.float64)
    sampling = mc_approx.Sampling(k=8)
    p = mc_approx.keep_probabilities(a.norm(dim=0), b.norm(dim=1), 8)
    terms = a.unsqueeze(2) * b.unsqueeze(0)  # (5, 40, 3): A_it B_tj
    variance = (((1 - p) / p).view(1, -1, 1) * terms.pow(2)).sum(dim=1)  # (5, 3)
    n = 4000
    g = gen(12)
    total = torch.zeros(5, 3, dtype=torch.float64)
    for _ in range(n):
        estimate, _ = mc_approx.sampled_matmul(a, b, sampling, g)
        total += estimate
    z = (total / n - a @ b) / (variance / n).sqrt()
    assert float(z.abs().max()) < 5.0
    # Not trivially exact: a single estimate is far from the product.
    single, kept = mc_approx.sampled_matmul(a, b, sampling, g)
    assert kept < 40 and float((single - a @ b).abs().max()) > 0.1


@pytest.mark.parametrize("mode", ["forward", "backward"])
def test_sampled_convolution_is_unbiased(mode: str) -> None:
    """Output, input gradient and weight gradient of a sampled convolution: the mean of many
    estimates approaches the exact value like 1/sqrt(n) (forward mode samples the input
    channels; backward mode, output channels for the input gradient and examples for the
    weight gradient)."""
    base = torch.nn.Conv2d(16, 12, 3, stride=2, padding=1, bias=False).double()
    x = torch.randn(6, 16, 7, 7, dtype=torch.float64, generator=gen(20), requires_grad=True)
    upstream = torch.randn(6, 12, 4, 4, dtype=torch.float64, generator=gen(21))
    exact = F.conv2d(x, base.weight, None, 2, 1)
    exact_gx, exact_gw = torch.autograd.grad((exact * upstream).sum(), (x, base.weight))
    conv = mc_approx_conv.MCConv2d(base, mode, mc_approx.Sampling(k=4), gen(22)).double()
    conv.train()

    def draw() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = conv(x)
        gx, gw = torch.autograd.grad((out * upstream).sum(), (x, conv.weight), allow_unused=True)
        return (
            out.detach(),
            torch.zeros_like(x) if gx is None else gx,
            torch.zeros_like(conv.weight) if gw is None else gw,
        )

    n = 1500
    totals = [torch.zeros_like(exact), torch.zeros_like(x), torch.zeros_like(conv.weight)]
    for _ in range(n):
        for total, value in zip(totals, draw(), strict=True):
            total += value
    ones = draw()
    sampled = 0
    for one, total, truth in zip(ones, totals, (exact, exact_gx, exact_gw), strict=True):
        truth = truth.detach()
        err_one = float((one - truth).norm() / truth.norm())
        err_mean = float((total / n - truth).norm() / truth.norm())
        if err_one > 1e-9:  # this product is sampled in this mode
            sampled += 1
            assert err_mean < err_one / 15, (err_mean, err_one)  # ~1/sqrt(1500) = 1/39
    # Forward mode samples the output, and so both gradients; backward mode the gradients.
    assert sampled == (3 if mode == "forward" else 2)


def test_cnn_probe_measures_sampled_convolution_features() -> None:
    arch = Architecture(
        in_features=3 * 8 * 8, width=16, depth=1, classes=4, kind="cnn", image_shape=(3, 8, 8)
    )
    images = torch.randn(10, 3, 8, 8, generator=gen(30))
    errors = {}
    for name, hyper in {
        "forward": {"mode": "forward"},
        "exact": {"mode": "forward", "sample_ratio": 1.0},
        "backward": {"mode": "backward"},
    }.items():
        model = build("mc_approx", arch, **hyper)
        model.eval()
        state = model.sampling_generator.get_state()
        errors[name] = model.probe_error(images, 4)
        assert torch.equal(model.sampling_generator.get_state(), state)  # training unaffected
        assert not any(model.epoch_stats().values())  # and its counters too
    # Sampling 10 of 64+ channels in each of ResNet-18's 20 convolutions compounds: the
    # features' error is large (Theorem 2's growth), but finite.
    assert len(errors["forward"]) == 1 and 0.05 < errors["forward"][0] < float("inf")
    assert errors["exact"] == [0.0]  # every channel kept: the exact features
    assert errors["backward"] == []  # the forward pass is exact: nothing to probe


def _exact_copy(backbone: torch.nn.Module) -> torch.nn.Module:
    """A copy of a backbone with every MC-APPROX convolution replaced by a plain one."""
    copy = deepcopy(backbone)

    def replace(module: torch.nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, mc_approx_conv.MCConv2d):
                plain = torch.nn.Conv2d(
                    child.in_channels,
                    child.out_channels,
                    child.kernel_size,  # type: ignore[arg-type]
                    stride=child.stride,  # type: ignore[arg-type]
                    padding=child.padding,  # type: ignore[arg-type]
                    bias=False,
                )
                plain.weight.data.copy_(child.weight.data)
                setattr(module, name, plain)
            else:
                replace(child)

    replace(copy)
    return copy


def test_cnn_forward_mode_recalibrates_batch_norm_with_exact_passes() -> None:
    """MC-APPROX's forward mode samples the convolutions' input channels while training, so
    batch norm's running statistics are learnt from sampled outputs while evaluation runs
    exact convolutions. `calibrate` recomputes them from exact passes: they must equal
    torch's own `update_bn` on a plain copy of the network, and evaluation must then be that
    exact network. (Without it, the sampled statistics are far off: checked too.)"""
    from methods.cnn import CALIBRATION_BATCH, CNNModel

    arch = Architecture(
        in_features=3 * 8 * 8, width=16, depth=1, classes=4, kind="cnn", image_shape=(3, 8, 8)
    )
    model = build("mc_approx", arch, mode="forward", sample_ratio=0.1, min_k=4)
    assert isinstance(model, CNNModel)
    g = gen(31)
    images, labels = torch.randn(64, 3, 8, 8, generator=g), torch.randint(0, 4, (64,), generator=g)
    settings = TrainSettings(lr=0.01, optimizer="sgd", momentum=0.0, batch_size=16)
    for start in range(0, 64, 16):
        train_steps(model, settings, images[start : start + 16], labels[start : start + 16], 1)
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    sampled_var = [bn.running_var.clone() for bn in norms]
    calibration = torch.randn(CALIBRATION_BATCH + 44, 3, 8, 8, generator=g)  # two passes
    reference = _exact_copy(model.backbone)
    torch.optim.swa_utils.update_bn(
        [calibration[:CALIBRATION_BATCH], calibration[CALIBRATION_BATCH:]], reference
    )
    state = model.sampling_generator.get_state()
    model.train()
    model.calibrate(calibration)
    assert torch.equal(model.sampling_generator.get_state(), state)  # no draws
    assert model.training and all(bn.training and bn.momentum == 0.1 for bn in norms)
    ref_norms = [m for m in reference.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn, ref in zip(norms, ref_norms, strict=True):
        torch.testing.assert_close(bn.running_mean, ref.running_mean)
        torch.testing.assert_close(bn.running_var, ref.running_var)
    # The statistics learnt from sampled outputs were far from the exact ones.
    worst = max(float((s / bn.running_var).max()) for s, bn in zip(sampled_var, norms, strict=True))
    assert worst > 2.0, worst
    model.eval()
    reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(images), model.head(reference(images)))
    # Backward mode trains with the exact forward pass: nothing to recalibrate.
    exact_forward = build("mc_approx", arch, mode="backward")
    before = [b.clone() for b in exact_forward.backbone.buffers()]
    exact_forward.calibrate(calibration)
    assert all(
        torch.equal(a, b) for a, b in zip(before, exact_forward.backbone.buffers(), strict=True)
    )


def test_backward_sampling_is_unbiased_and_forward_exact() -> None:
    layer = mc_approx.MCLinear(30, 50, "backward", mc_approx.Sampling(k=5), gen(4)).double()
    x = torch.randn(8, 30, dtype=torch.float64, generator=gen(5), requires_grad=True)
    upstream = torch.randn(8, 50, dtype=torch.float64, generator=gen(6))
    layer.train()
    exact = F.linear(x, layer.weight, layer.bias)
    torch.testing.assert_close(layer(x), exact)
    exact_gx, exact_gw = torch.autograd.grad((exact * upstream).sum(), (x, layer.weight))
    n = 3000
    gx_sum, gw_sum = torch.zeros_like(x), torch.zeros_like(layer.weight)
    for _ in range(n):
        gx, gw = torch.autograd.grad((layer(x) * upstream).sum(), (x, layer.weight))
        gx_sum += gx
        gw_sum += gw
    # Loose but meaningful: relative error of the means, far below one estimate's error.
    one_gx, one_gw = torch.autograd.grad((layer(x) * upstream).sum(), (x, layer.weight))
    for one, total, exact_grad in ((one_gx, gx_sum, exact_gx), (one_gw, gw_sum, exact_gw)):
        err_one = float((one - exact_grad).norm() / exact_grad.norm())
        err_mean = float((total / n - exact_grad).norm() / exact_grad.norm())
        # A mean of n unbiased estimates shrinks the error like 1/sqrt(n) (here ~1/55).
        assert err_mean < err_one / 20, (err_mean, err_one)
        assert err_one > 0.05  # and single estimates really are sampled
    stats = layer.take_stats()
    assert stats["grad_input"] < 10 and stats["grad_weight"] < 8


def test_custom_autograd_functions_pass_gradcheck() -> None:
    exact = mc_approx.Sampling(k=10_000)
    linear = mc_approx.MCLinear(4, 3, "backward", exact, gen(0)).double()
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True, generator=gen(1))

    def linear_fn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = mc_approx._BackwardSampledLinear.apply(x, w, b, linear)
        return out

    w = linear.weight.detach().clone().requires_grad_(True)
    b = linear.bias.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(linear_fn, (x, w, b))

    conv = mc_approx_conv.MCConv2d(
        torch.nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False), "backward", exact, gen(0)
    ).double()
    images = torch.randn(2, 2, 5, 5, dtype=torch.float64, requires_grad=True, generator=gen(2))
    kernel = conv.weight.detach().clone().requires_grad_(True)

    def conv_fn(images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = mc_approx_conv._BackwardSampledConv2d.apply(images, kernel, conv)
        return out

    assert torch.autograd.gradcheck(conv_fn, (images, kernel))


def test_batch_one_gives_nonzero_gradients() -> None:
    """The reference implementation's log-softmax over the batch gave zero gradients here."""
    arch = Architecture(in_features=20, width=32, depth=2, classes=5)
    model = build("mc_approx", arch)
    model.train()
    x, y = torch.randn(1, 20, generator=gen(8)), torch.tensor([2])
    F.nll_loss(model(x), y).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and float(param.grad.abs().sum()) > 0, name


# --- the sparse paths really skip work ----------------------------------------------------------


class TouchLog(TorchDispatchMode):
    """Records every aten op that receives one of the watched (full-size) tensors."""

    def __init__(self, watched: list[torch.Tensor]):
        super().__init__()
        self.watched = {t.data_ptr() for t in watched}
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        flat: list[Any] = []
        for arg in [*args, *kwargs.values()]:
            flat.extend(arg if isinstance(arg, list | tuple) else [arg])
        if any(isinstance(a, torch.Tensor) and a.data_ptr() in self.watched for a in flat):
            self.ops.append(func.__name__)
        return func(*args, **kwargs)


SPARSE_ACCESS = {
    "index_select.default",
    "index.Tensor",
    "index_put_.default",
    "index_copy_.default",
    "view.default",  # metadata only: a flat view to gather from or scatter into
    "detach.default",  # metadata only: the weights, outside the autograd graph
}


@pytest.mark.parametrize(
    ("method", "optimizer"), [("dropout", "sgd"), ("dropout", "adam"), ("alsh_approx", "adam")]
)
def test_sparse_methods_only_gather_and_scatter_whole_weights(method: str, optimizer: str) -> None:
    arch = Architecture(in_features=784, width=1000, depth=3, classes=10)
    model = build(method, arch)
    settings = TrainSettings(lr=1e-3, optimizer=optimizer, momentum=0.0, batch_size=1)
    opt = model.make_optimizer(settings)
    model.train()
    x, y = torch.randn(3, 784, generator=gen(1)), torch.tensor([1, 2, 3])
    hidden = [layer.weight for layer in model.layers[:-1]]  # type: ignore[union-attr]
    hidden_names = {f"layers.{i}.weight" for i in range(arch.depth)}
    state = [t for name, t in opt.state_dict()["state"].items() if name in hidden_names]
    if isinstance(model, alsh_approx.ALSHApprox):
        model.rebuild_tables()  # upkeep (on its schedule, timed apart) reads whole matrices
    before = [w.clone() for w in hidden]
    for i in range(3):
        with TouchLog(hidden + state) as log:
            loss = F.nll_loss(model(x[i : i + 1]), y[i : i + 1])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        # No dense op (matmul, add, mul, zeros, copy...) ever reads or writes a whole
        # hidden weight matrix or its optimizer state: only gathers and scatters of blocks.
        # ALSH-APPROX's single-example step runs compiled kernels that torch does not see
        # (tests/test_sparse_kernels.py checks that they write inside the blocks only).
        if opt.implementation().endswith("compiled"):  # type: ignore[attr-defined]
            assert not log.ops, log.ops
        else:
            assert log.ops and set(log.ops) <= SPARSE_ACCESS, set(log.ops) - SPARSE_ACCESS
    # Gradients and updates are confined to active blocks: few weights moved.
    total = sum(w.numel() for w in hidden)
    changed = sum(int((w != b).sum()) for w, b in zip(hidden, before, strict=True))
    assert 0 < changed < 0.2 * total
    assert all(w.grad is None for w in hidden)  # no dense gradient was ever formed
    assert opt.updated_elements < 0.1 * sum(p.numel() for p in model.parameters())


def test_drawing_no_pair_gives_a_zero_estimate_not_an_error() -> None:
    """With k = 1, often no pair is drawn: the estimate is then exactly zero."""
    sampling = mc_approx.Sampling(k=1)
    g = gen(0)
    a, b = torch.randn(3, 30, generator=gen(1)), torch.randn(30, 2, generator=gen(2))
    counts = [mc_approx.sampled_matmul(a, b, sampling, g)[1] for _ in range(50)]
    assert 0 in counts
    conv = mc_approx_conv.MCConv2d(
        torch.nn.Conv2d(4, 6, 3, padding=1, bias=False), "backward", sampling, gen(3)
    )
    conv.train()
    images = torch.randn(2, 4, 5, 5, generator=gen(4), requires_grad=True)
    for _ in range(30):
        conv(images).sum().backward()
    forward_conv = mc_approx_conv.MCConv2d(
        torch.nn.Conv2d(4, 6, 3, padding=1, bias=False), "forward", sampling, gen(5)
    )
    forward_conv.train()
    shapes = {tuple(forward_conv(images).shape) for _ in range(30)}
    assert shapes == {(2, 6, 5, 5)}
    stats = forward_conv.take_stats()
    assert stats["forward"] < 1.5


@pytest.mark.parametrize("batch_size", [1, 20])
def test_tracked_weight_norms_follow_the_weights(batch_size: int) -> None:
    """With plain SGD, MC-APPROX keeps each layer's weight-row norms up to date through the
    steps (instead of re-reading every matrix every step): they must equal the exact norms."""
    arch = Architecture(in_features=30, width=64, depth=2, classes=5)
    model = build("mc_approx", arch)
    settings = TrainSettings(lr=0.05, optimizer="sgd", momentum=0.0, batch_size=batch_size)
    g = gen(3)
    x = torch.randn(300 * batch_size, 30, generator=g)
    y = torch.randint(0, 5, (300 * batch_size,), generator=g)
    opt = model.make_optimizer(settings)
    model.train()
    layers = [m for m in model.layers if isinstance(m, mc_approx.MCLinear)]
    # The first layer's input gradient is never needed, nor is the output layer's sampled
    # (5 units, k = 10): only the hidden layer in between uses (and tracks) its norms.
    assert [layer.track_norms for layer in layers] == [False, True, False]
    for step in range(300):
        batch = slice(step * batch_size, (step + 1) * batch_size)
        loss = F.nll_loss(model(x[batch]), y[batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    used = [layer for layer in layers if layer.step_state.tracked_steps >= 0]
    assert len(used) == 1 and used[0].step_state.tracked_steps == 300  # no re-read in between
    exact = used[0].weight.detach().double().norm(dim=1)
    torch.testing.assert_close(used[0].row_sq.sqrt(), exact, rtol=1e-5, atol=1e-8)
    initial = build("mc_approx", arch).layers[1].weight.detach().double().norm(dim=1)
    assert float((exact - initial).abs().max()) > 1e-3  # the weights did move
    # Adam, momentum or forward mode: norms are read exactly at every step instead.
    for other in (
        TrainSettings(lr=0.01, optimizer="adam", momentum=0.0, batch_size=1),
        TrainSettings(lr=0.01, optimizer="sgd", momentum=0.9, batch_size=1),
    ):
        fresh = build("mc_approx", arch)
        fresh.make_optimizer(other)
        assert not any(m.track_norms for m in fresh.layers if isinstance(m, mc_approx.MCLinear))


@pytest.mark.parametrize("batch_size", [1, 20])
def test_factored_sgd_step_equals_forming_the_gradient(batch_size: int) -> None:
    """MC-APPROX's SGD (backward mode) never forms a weight gradient: it applies
    W <- W - lr coef^T x_kept as one rank-c update. Against torch's SGD on the gradients
    autograd forms (the same model, the same draws: weight-row norms read exactly on both
    sides, since tracked ones round differently and 1/p scales amplify it), over 6 steps,
    one of them two backward passes before its step: the same weights and biases up to
    rounding. Catches a wrong sign or scale of the update, the factors transposed or of
    another step, a layer left out (the first or the output one), a second backward pass
    overwriting the first instead of adding to it, biases left unstepped."""
    arch = Architecture(in_features=30, width=64, depth=2, classes=5)
    settings = TrainSettings(lr=0.05, optimizer="sgd", momentum=0.0, batch_size=batch_size)
    factored, formed = build("mc_approx", arch), build("mc_approx", arch)
    opt_factored = factored.make_optimizer(settings)
    assert optimizer_implementation(opt_factored).startswith("sgd:factored")
    for layer in factored.layers:
        layer.track_norms = False
    opt_formed = torch.optim.SGD(formed.parameters(), lr=settings.lr)
    g = gen(3)
    x = torch.randn(7 * batch_size, 30, generator=g)
    y = torch.randint(0, 5, (7 * batch_size,), generator=g)
    start = [p.detach().clone() for p in formed.parameters()]
    for model, opt in ((factored, opt_factored), (formed, opt_formed)):
        model.train()
        for step in range(6):
            opt.zero_grad(set_to_none=True)
            for part in (step, 6) if step == 3 else (step,):
                rows = slice(part * batch_size, (part + 1) * batch_size)
                F.nll_loss(model(x[rows]), y[rows]).backward()
            opt.step()
    assert all(p.grad is None for p in factored.parameters() if p.dim() == 2)
    for (name, a), b, first in zip(
        factored.named_parameters(), formed.parameters(), start, strict=True
    ):
        assert float((b - first).detach().abs().max()) > 1e-3, name  # every one moved
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-7)


def test_whole_mlp_node_equals_the_chain_of_layer_nodes(
    batch: tuple[torch.Tensor, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    """MC-APPROX trains its MLP as one autograd node: same draws, same arithmetic, same
    bits as one node per layer (`MCLinear` and ReLU), which is what it replaces."""
    x, y = batch
    settings = TrainSettings(lr=0.05, optimizer="sgd", momentum=0.0, batch_size=len(y))
    fused = build("mc_approx", SMALL, sample_ratio=0.0, k=3)
    chained = build("mc_approx", SMALL, sample_ratio=0.0, k=3)

    def per_layer(self: mc_approx.MCApprox, inputs: torch.Tensor) -> torch.Tensor:
        h = inputs
        for layer in self.layers[:-1]:
            h = F.relu(layer(h))
        return F.log_softmax(self.layers[-1](h), dim=1)

    losses = train_steps(fused, settings, x, y, steps=6)
    monkeypatch.setattr(mc_approx.MCApprox, "forward", per_layer)
    assert train_steps(chained, settings, x, y, steps=6) == losses
    for p, q in zip(fused.parameters(), chained.parameters(), strict=True):
        assert torch.equal(p, q)


def test_whole_mlp_node_passes_gradcheck() -> None:
    arch = Architecture(in_features=4, width=5, depth=2, classes=3)
    model = build("mc_approx", arch, sample_ratio=0.0, k=10_000)
    model.double()
    layers = tuple(m for m in model.layers if isinstance(m, mc_approx.MCLinear))
    params = [t.detach().clone().requires_grad_(True) for m in layers for t in (m.weight, m.bias)]
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True, generator=gen(1))

    def fn(x: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = mc_approx._BackwardSampledMLP.apply(layers, x, *ps)
        return out

    assert torch.autograd.gradcheck(fn, (x, *params))
