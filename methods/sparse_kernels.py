"""Compiled (numba) kernels for one example's sparse training step on its active blocks.

At batch 1 a sparse step is a few thousand multiply-adds per layer wrapped in dozens of torch
calls (gathers and scatters of weight blocks, their gradients and both Adam moments, autograd's
bookkeeping): measured at depth 3, 28 small gathers/scatters and the Python between them were
most of a 0.9 ms step. These kernels do the same arithmetic in one pass per layer and phase:

- `layer_forward`: gathers W[rows, cols] into a contiguous block (kept for the backward pass
  and for inspection) and computes z = W_block h + b[rows] and h' = relu(z);
- `layer_backward`: the block's weight and bias gradients, and the input's gradient;
- `adam_block` / `sgd_block`: the lazy update of exactly that block, in place in the full
  parameter and its optimizer state (nothing outside the block is read or written).

Sums run in a fixed order (8 interleaved partial sums, no fast-math reassociation and no fused
multiply-adds), so a step is bit-for-bit repeatable; they differ from torch's BLAS products in
the last bits, which is why the method that uses them has its own version. `cols` of length 0
means "every column" (the first layer's dense input; the output layer's rows).

numba (a well-kept JIT compiler, already how scientific Python ships kernels like these) was
chosen over a torch C++ extension: no compiler is needed at install time, the kernels stay
Python-readable, and compiled code is cached on disk per machine (`cache=True`).
"""

from __future__ import annotations

import numpy as np
from numba import njit

_CACHE = True


@njit(cache=_CACHE, error_model="numpy", inline="always")
def _dot(w: np.ndarray, h: np.ndarray) -> np.float32:
    """sum_k w[k] h[k] in a fixed order: 8 interleaved partial sums, then a fixed tree."""
    n = w.shape[0]
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float32(0.0)
    k = 0
    while k + 8 <= n:
        s0 += w[k] * h[k]
        s1 += w[k + 1] * h[k + 1]
        s2 += w[k + 2] * h[k + 2]
        s3 += w[k + 3] * h[k + 3]
        s4 += w[k + 4] * h[k + 4]
        s5 += w[k + 5] * h[k + 5]
        s6 += w[k + 6] * h[k + 6]
        s7 += w[k + 7] * h[k + 7]
        k += 8
    tail = np.float32(0.0)
    while k < n:
        tail += w[k] * h[k]
        k += 1
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)) + tail


@njit(cache=_CACHE, error_model="numpy")
def layer_forward(
    weight: np.ndarray,  # (out, in) the full parameter
    bias: np.ndarray,  # (out,)
    rows: np.ndarray,  # (r,) int64 active units, sorted
    cols: np.ndarray,  # (c,) int64 active inputs, sorted; empty: every input
    h: np.ndarray,  # (c,) the layer's input on those columns
    block: np.ndarray,  # (r, c) out: W[rows, cols]
    bias_block: np.ndarray,  # (r,) out: b[rows]
    out: np.ndarray,  # (r,) out: relu(block @ h + bias_block)
    relu: bool,
) -> None:
    dense = cols.shape[0] == 0
    for j in range(rows.shape[0]):
        row = weight[rows[j]]
        dst = block[j]
        if dense:
            dst[:] = row
        else:
            for k in range(cols.shape[0]):
                dst[k] = row[cols[k]]
        b = bias[rows[j]]
        bias_block[j] = b
        z = _dot(dst, h) + b
        out[j] = max(z, np.float32(0.0)) if relu else z


@njit(cache=_CACHE, error_model="numpy")
def output_forward(
    weight: np.ndarray,  # (classes, in)
    bias: np.ndarray,  # (classes,)
    cols: np.ndarray,  # (c,) int64 the last hidden layer's active units
    h: np.ndarray,  # (c,)
    block: np.ndarray,  # (classes, c) out: W[:, cols]
    bias_block: np.ndarray,  # (classes,) out: b
    log_probs: np.ndarray,  # (classes,) out: log_softmax(block @ h + b)
) -> None:
    for j in range(weight.shape[0]):
        row = weight[j]
        dst = block[j]
        for k in range(cols.shape[0]):
            dst[k] = row[cols[k]]
        bias_block[j] = bias[j]
        log_probs[j] = _dot(dst, h) + bias[j]
    # log_softmax as torch computes it: z - max - log(sum(exp(z - max))).
    top = log_probs.max()
    total = np.float32(0.0)
    for j in range(log_probs.shape[0]):
        total += np.exp(log_probs[j] - top)
    shift = top + np.log(total)
    for j in range(log_probs.shape[0]):
        log_probs[j] = log_probs[j] - shift


@njit(cache=_CACHE, error_model="numpy")
def log_softmax_backward(log_probs: np.ndarray, grad: np.ndarray, out: np.ndarray) -> None:
    """d loss / d logits from d loss / d log-probabilities: g - softmax * sum(g)."""
    total = np.float32(0.0)
    for j in range(grad.shape[0]):
        total += grad[j]
    for j in range(grad.shape[0]):
        out[j] = grad[j] - np.exp(log_probs[j]) * total


@njit(cache=_CACHE, error_model="numpy")
def layer_backward(
    block: np.ndarray,  # (r, c) the weights the forward pass used
    h_in: np.ndarray,  # (c,) the layer's input
    h_out: np.ndarray,  # (r,) its output (relu applied when `relu`)
    grad_out: np.ndarray,  # (r,) d loss / d output
    grad_block: np.ndarray,  # (r, c) out: d loss / d W[rows, cols]
    grad_bias: np.ndarray,  # (r,) out: d loss / d b[rows]
    grad_in: np.ndarray,  # (c,) out (when `need_input`): d loss / d h_in
    relu: bool,
    need_input: bool,
) -> None:
    if need_input:
        grad_in[:] = 0.0
    for j in range(block.shape[0]):
        g = grad_out[j]
        if relu and not h_out[j] > 0.0:  # relu's gradient is 0 where its input was <= 0
            g = np.float32(0.0)
        grad_bias[j] = g
        dst = grad_block[j]
        for k in range(h_in.shape[0]):
            dst[k] = g * h_in[k]
        if need_input and g != 0.0:
            w = block[j]
            for k in range(h_in.shape[0]):
                grad_in[k] += w[k] * g


@njit(cache=_CACHE, error_model="numpy")
def adam_block(
    param: np.ndarray,  # (n, m) or (n,) the full parameter, updated in place
    exp_avg: np.ndarray,  # same shape: Adam's first moment
    exp_avg_sq: np.ndarray,  # same shape: second moment
    rows: np.ndarray,  # (r,) int64; empty: every row
    cols: np.ndarray,  # (c,) int64; empty: every column (ignored for 1-D parameters)
    grad: np.ndarray,  # (r, c) or (r,) the block's gradient
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    step: int,
) -> None:
    """torch.optim.Adam's update (amsgrad off, no weight decay) on the block only, with the
    global step's bias corrections (lazy Adam)."""
    # The constants as torch's for-loop Adam forms them: in double, then single precision.
    w1 = np.float32(1.0 - beta1)
    w2 = np.float32(1.0 - beta2)
    b2 = np.float32(beta2)
    e = np.float32(eps)
    step_size = np.float32(lr / (1.0 - beta1**step))
    bc2_sqrt = np.float32(np.sqrt(1.0 - beta2**step))
    p2 = param.reshape(param.shape[0], -1)
    m2 = exp_avg.reshape(param.shape[0], -1)
    v2 = exp_avg_sq.reshape(param.shape[0], -1)
    g2 = grad.reshape(grad.shape[0], -1)
    dense = cols.shape[0] == 0 or param.ndim == 1
    for j in range(g2.shape[0]):
        row = rows[j] if rows.shape[0] else j
        p, m, v, g = p2[row], m2[row], v2[row], g2[j]
        if dense:  # contiguous: the compiler vectorises this loop
            for k in range(g.shape[0]):
                mk = m[k] + w1 * (g[k] - m[k])  # lerp(m, g, 1 - beta1)
                vk = v[k] * b2 + w2 * g[k] * g[k]
                m[k] = mk
                v[k] = vk
                p[k] -= step_size * (mk / (np.sqrt(vk) / bc2_sqrt + e))
        else:
            for k in range(g.shape[0]):
                c = cols[k]
                mk = m[c] + w1 * (g[k] - m[c])
                vk = v[c] * b2 + w2 * g[k] * g[k]
                m[c] = mk
                v[c] = vk
                p[c] -= step_size * (mk / (np.sqrt(vk) / bc2_sqrt + e))


@njit(cache=_CACHE, error_model="numpy")
def sgd_block(
    param: np.ndarray,
    buffer: np.ndarray,  # momentum buffer (same shape; unused without momentum)
    rows: np.ndarray,
    cols: np.ndarray,
    grad: np.ndarray,
    lr: float,
    momentum: float,
) -> None:
    """torch.optim.SGD's update (dampening 0, no Nesterov, no weight decay) on the block."""
    a = np.float32(lr)
    mu = np.float32(momentum)
    p2 = param.reshape(param.shape[0], -1)
    b2 = buffer.reshape(param.shape[0], -1)
    g2 = grad.reshape(grad.shape[0], -1)
    dense = cols.shape[0] == 0 or param.ndim == 1
    for j in range(g2.shape[0]):
        row = rows[j] if rows.shape[0] else j
        p, b, g = p2[row], b2[row], g2[j]
        for k in range(g.shape[0]):
            c = k if dense else cols[k]
            d = g[k]
            if momentum != 0.0:
                d = b[c] * mu + d
                b[c] = d
            p[c] -= a * d


@njit(cache=_CACHE, error_model="numpy")
def adam_layer(
    weight: np.ndarray,
    weight_state: np.ndarray,  # (2, out, in): Adam's two moments, stacked
    bias: np.ndarray,
    bias_state: np.ndarray,  # (2, out)
    rows: np.ndarray,
    cols: np.ndarray,
    grad_weight: np.ndarray,
    grad_bias: np.ndarray,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    step: int,
) -> None:
    """`adam_block` on a layer's weight block and its bias (the same rows), in one call."""
    adam_block(
        weight, weight_state[0], weight_state[1], rows, cols, grad_weight,
        lr, beta1, beta2, eps, step,
    )  # fmt: skip
    adam_block(
        bias, bias_state[0], bias_state[1], rows, cols, grad_bias, lr, beta1, beta2, eps, step
    )


@njit(cache=_CACHE, error_model="numpy")
def sgd_layer(
    weight: np.ndarray,
    weight_buffer: np.ndarray,
    bias: np.ndarray,
    bias_buffer: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    grad_weight: np.ndarray,
    grad_bias: np.ndarray,
    lr: float,
    momentum: float,
) -> None:
    """`sgd_block` on a layer's weight block and its bias (the same rows), in one call."""
    sgd_block(weight, weight_buffer, rows, cols, grad_weight, lr, momentum)
    sgd_block(bias, bias_buffer, rows, cols, grad_bias, lr, momentum)


_warm = False


def warm_up() -> None:
    """Compile (or load from numba's on-disk cache) every kernel for the argument types a
    training step passes, once per process: so that a cell's first timed step does not pay
    for compilation."""
    global _warm
    if _warm:
        return
    f32, i64 = np.float32, np.int64
    weight, bias = np.zeros((3, 2), f32), np.zeros(3, f32)
    rows, cols, h = np.arange(2, dtype=i64), np.empty(0, i64), np.ones(2, f32)
    block, bias_block, out = np.empty((2, 2), f32), np.empty(2, f32), np.empty(2, f32)
    layer_forward(weight, bias, rows, cols, h, block, bias_block, out, True)
    output_forward(weight, bias, rows, h, np.empty((3, 2), f32), np.empty(3, f32), np.empty(3, f32))
    log_softmax_backward(out, h, np.empty(2, f32))
    grad_block, grad_bias, grad_in = np.zeros((2, 2), f32), np.zeros(2, f32), np.empty(2, f32)
    layer_backward(block, h, out, h, grad_block, grad_bias, grad_in, True, True)
    state, bias_state = np.zeros((2, 3, 2), f32), np.zeros((2, 3), f32)
    adam_layer(weight, state, bias, bias_state, rows, cols, grad_block, grad_bias,
               0.0, 0.9, 0.999, 1e-8, 1)  # fmt: skip
    sgd_layer(weight, weight, bias, bias, rows, cols, grad_block, grad_bias, 0.0, 0.0)
    _warm = True
