"""The floors under a dense epoch (`runner bench` reports each dense method's epoch against
both): the floating-point operations it cannot do without at the machine's single-thread
matrix-multiply rate (a large square product's), and the step's own products alone, in step
order, at the rate the BLAS reaches on those shapes."""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable


def matmul_rate(seconds: float = 0.5, size: int = 1024) -> float:
    """This machine's single-thread float32 matrix-multiply rate, FLOP/s: the median of
    timed (size x size) @ (size x size) products (large enough for the BLAS's peak kernel),
    after one warm-up product, on the thread count every cell uses."""
    import torch

    a = torch.randn(size, size, generator=torch.Generator().manual_seed(0))
    b = torch.randn(size, size, generator=torch.Generator().manual_seed(1))
    out = torch.empty(size, size)
    return 2.0 * size**3 / median_seconds(lambda: torch.mm(a, b, out=out), seconds)


def median_seconds(run: Callable[[], object], seconds: float) -> float:
    """The median time of `run()` over repeats for about `seconds` (at least 5), after one
    warm-up call."""
    run()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < 5 or time.perf_counter() < deadline:
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def epoch_min_flops(features: int, width: int, depth: int, classes: int, examples: int) -> float:
    """The floating-point operations a dense MLP epoch cannot do without: per example and
    layer, the forward product and the weight gradient (2 in*out each), and the input gradient
    of every layer but the first (whose input needs none). Activations, the loss and the
    update are left out: a lower bound."""
    dims = [features] + [width] * depth + [classes]
    products = [a * b for a, b in itertools.pairwise(dims)]
    return float(examples) * (4.0 * sum(products) + 2.0 * sum(products[1:]))


def step_products(
    features: int, width: int, depth: int, classes: int, batch: int
) -> list[tuple[str, int, tuple[int, int, int]]]:
    """The matrix products of one dense MLP step, in the order autograd runs them for
    torch.nn.Linear layers y = x W^T: (kind, layer index, (m, k, n)). The forward products
    x @ W^T, layer by layer; then, from the last layer back, the weight gradient dY^T @ x and
    the input gradient dY @ W (not for the first layer, whose input needs none)."""
    dims = [features] + [width] * depth + [classes]
    layers = list(itertools.pairwise(dims))
    products = [("forward", i, (batch, a, b)) for i, (a, b) in enumerate(layers)]
    for i in reversed(range(len(layers))):
        fan_in, fan_out = layers[i]
        products.append(("weight gradient", i, (fan_out, batch, fan_in)))
        if i > 0:
            products.append(("input gradient", i, (batch, fan_out, fan_in)))
    return products


def step_blas_seconds(
    features: int, width: int, depth: int, classes: int, batch: int, seconds: float = 0.5
) -> float:
    """One dense step's matrix products alone, run in step order on operands laid out as
    autograd's (each layer's own weights, read transposed in the forward product, and its own
    gradient matrix written): the median over repeats on this thread. What the BLAS needs for
    the step on these shapes, caches included, without the rest (Python, autograd, the
    activations, the loss, the update). A batch-20 product reads a whole weight matrix for
    20 multiply-adds per weight: far from the FLOPs floor's large-matrix rate."""
    import torch

    g = torch.Generator().manual_seed(0)
    dims = [features] + [width] * depth + [classes]
    weights = [torch.randn(b, a, generator=g) for a, b in itertools.pairwise(dims)]
    inputs = [torch.randn(batch, w.shape[1], generator=g) for w in weights]
    upstream = [torch.randn(batch, w.shape[0], generator=g) for w in weights]
    outputs = [torch.empty(batch, w.shape[0]) for w in weights]
    grads = [torch.empty_like(w) for w in weights]
    grad_inputs = [torch.empty(batch, w.shape[1]) for w in weights]
    calls = []
    for kind, i, _ in step_products(features, width, depth, classes, batch):
        if kind == "forward":
            calls.append((inputs[i], weights[i].t(), outputs[i]))
        elif kind == "weight gradient":
            calls.append((upstream[i].t(), inputs[i], grads[i]))
        else:
            calls.append((upstream[i], weights[i], grad_inputs[i]))

    def step() -> None:
        for a, b, out in calls:
            torch.mm(a, b, out=out)

    return median_seconds(step, seconds)
