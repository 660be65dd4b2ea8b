"""The floor under a dense epoch: the floating-point operations it cannot do without, and the
machine's single-thread matrix-multiply rate that bounds how fast they can go (`runner bench`
reports each dense method's epoch against the two)."""

from __future__ import annotations

import itertools
import statistics
import time


def matmul_rate(seconds: float = 0.5, size: int = 1024) -> float:
    """This machine's single-thread float32 matrix-multiply rate, FLOP/s: the median of
    timed (size x size) @ (size x size) products (large enough for the BLAS's peak kernel),
    after one warm-up product, on the thread count every cell uses."""
    import torch

    a = torch.randn(size, size, generator=torch.Generator().manual_seed(0))
    b = torch.randn(size, size, generator=torch.Generator().manual_seed(1))
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < 5 or time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - start)
    return 2.0 * size**3 / statistics.median(times)


def epoch_min_flops(features: int, width: int, depth: int, classes: int, examples: int) -> float:
    """The floating-point operations a dense MLP epoch cannot do without: per example and
    layer, the forward product and the weight gradient (2 in*out each), and the input gradient
    of every layer but the first (whose input needs none). Activations, the loss and the
    update are left out: a lower bound."""
    dims = [features] + [width] * depth + [classes]
    products = [a * b for a, b in itertools.pairwise(dims)]
    return float(examples) * (4.0 * sum(products) + 2.0 * sum(products[1:]))
