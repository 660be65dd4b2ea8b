"""ALSH-APPROX's per-step hashing, compiled (numba): bucket numbers of a batch's queries and
each example's active units from its buckets (methods/alsh_approx.py says what they mean).

Both run at every training step, for every hidden layer and example, on tiny arrays: as numpy
code they were a dozen calls per layer and example (about a fifth of a batch-1 step at depth 3);
compiled they are one call per layer. Every random choice draws from xoshiro256** (Blackman
and Vigna), whose whole state is four 64-bit words in a numpy array the method owns and
checkpoints: a numpy Generator passed to compiled code costs more to hand over (tens of
microseconds per call) than the choice itself.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_U = np.uint64


def seed_state(seed: int) -> np.ndarray:
    """xoshiro256**'s four state words from one integer seed, by SplitMix64 (the seeding its
    authors recommend; never all zero)."""
    mask = (1 << 64) - 1
    words, x = [], seed & mask
    for _ in range(4):
        x = (x + 0x9E3779B97F4A7C15) & mask
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        words.append(z ^ (z >> 31))
    return np.array(words, dtype=np.uint64)


@njit(cache=True, error_model="numpy", inline="always")
def _rotl(x: np.uint64, k: int) -> np.uint64:
    return (x << _U(k)) | (x >> _U(64 - k))


@njit(cache=True, error_model="numpy")
def next_u64(s: np.ndarray) -> np.uint64:
    """xoshiro256**: the next 64 random bits; advances the state s (4 uint64) in place."""
    result = _rotl(s[1] * _U(5), 7) * _U(9)
    t = s[1] << _U(17)
    s[2] ^= s[0]
    s[3] ^= s[1]
    s[1] ^= s[2]
    s[0] ^= s[3]
    s[2] ^= t
    s[3] = _rotl(s[3], 45)
    return result


@njit(cache=True, error_model="numpy", inline="always")
def below(s: np.ndarray, n: int) -> int:
    """A uniform integer in [0, n) from 53 random bits (bias below n / 2^53)."""
    return int((next_u64(s) >> _U(11)) * (1.0 / 9007199254740992.0) * n)


@njit(cache=True, error_model="numpy")
def bucket_codes(
    h: np.ndarray,  # (B, n) the layer's inputs on the active units below
    prev: np.ndarray,  # (n,) int64 those units; empty: the network's input (every feature)
    planes: np.ndarray,  # (width + m, K * L) SRP hyperplanes over the transformed space
    bias_row: np.ndarray,  # (K * L,) the query's constant 1 (appended bias) or zeros
    tail: np.ndarray,  # (K * L,) Q's m halves, projected
    K: int,
    L: int,
    hash_bias: bool,
    codes: np.ndarray,  # (B, L) int64 out: bucket numbers
) -> None:
    """sign(Q(a) . plane) for every plane, K bits per table: a's zero entries (most of an image,
    every ReLU-inactive unit) are skipped, which changes no sum."""
    KL = K * L
    dense = prev.shape[0] == 0
    dots = np.empty(KL, dtype=np.float32)
    for b in range(h.shape[0]):
        a = h[b]
        dots[:] = 0.0
        sq = np.float32(0.0)
        for k in range(a.shape[0]):
            ak = a[k]
            if ak == 0.0:
                continue
            sq += ak * ak
            row = planes[k] if dense else planes[prev[k]]
            for t in range(KL):
                dots[t] += ak * row[t]
        if hash_bias:
            sq += np.float32(1.0)
        norm = np.sqrt(max(sq, np.float32(np.finfo(np.float32).tiny)))
        for t in range(L):
            code = 0
            for i in range(K):
                j = t * K + i
                if (dots[j] + bias_row[j]) / norm + tail[j] > 0.0:
                    code |= 1 << i
            codes[b, t] = code


@njit(cache=True, error_model="numpy", inline="always")
def _partial_shuffle(a: np.ndarray, n: int, k: int, rng: np.ndarray) -> None:
    """Move a uniformly random k-subset of a[:n] to a[:k] (Fisher-Yates, first k steps)."""
    for i in range(k):
        j = i + below(rng, n - i)
        a[i], a[j] = a[j], a[i]


@njit(cache=True, error_model="numpy")
def choose_units(
    codes: np.ndarray,  # (B, L) int64 bucket numbers
    members: np.ndarray,  # (L, units) int64 units sorted by bucket
    offsets: np.ndarray,  # (L, 2^K + 1) int64 bucket starts
    target: int,
    exact: bool,  # active_size "target" (else "buckets")
    rng: np.ndarray,  # (4,) uint64 xoshiro256** state, advanced in place
    out: np.ndarray,  # (B * units,) int64 out: every example's units, sorted, one after another
    ptr: np.ndarray,  # (B + 1,) int64 out: example b's units are out[ptr[b]:ptr[b + 1]]
    filled: np.ndarray,  # (B,) int64 out: how many of them are random fill
    ever: np.ndarray,  # (units,) bool: every chosen unit is marked True in it
) -> None:
    """Each example's active units from its buckets, table by table (see ALSHApprox)."""
    units = members.shape[1]
    mine = np.zeros(units, dtype=np.bool_)
    scratch = np.empty(units, dtype=np.int64)
    pos = 0
    ptr[0] = 0
    for b in range(codes.shape[0]):
        mine[:] = False
        found = 0
        for t in range(codes.shape[1]):
            lo, hi = offsets[t, codes[b, t]], offsets[t, codes[b, t] + 1]
            count = 0
            if exact:  # the bucket's new units; the one that crosses the target is subsampled
                for i in range(lo, hi):
                    if not mine[members[t, i]]:
                        scratch[count] = members[t, i]
                        count += 1
                if found + count > target:
                    _partial_shuffle(scratch, count, target - found, rng)
                    count = target - found
            else:  # whole buckets (one larger than the target subsampled to it)
                size = hi - lo
                for i in range(size):
                    scratch[i] = members[t, lo + i]
                if size > target:
                    _partial_shuffle(scratch, size, target, rng)
                    size = target
                for i in range(size):
                    if not mine[scratch[i]]:
                        scratch[count] = scratch[i]
                        count += 1
            for i in range(count):
                mine[scratch[i]] = True
            found += count
            if found >= target:
                break
        fill = 0
        if found < target:  # every bucket together held fewer: random units fill up
            count = 0
            for u in range(units):
                if not mine[u]:
                    scratch[count] = u
                    count += 1
            fill = target - found
            _partial_shuffle(scratch, count, fill, rng)
            for i in range(fill):
                mine[scratch[i]] = True
        filled[b] = fill
        for u in range(units):
            if mine[u]:
                out[pos] = u
                ever[u] = True
                pos += 1
        ptr[b + 1] = pos


@njit(cache=True, error_model="numpy")
def hash_and_choose(
    h: np.ndarray,
    prev: np.ndarray,
    planes: np.ndarray,
    bias_row: np.ndarray,
    tail: np.ndarray,
    K: int,
    L: int,
    hash_bias: bool,
    members: np.ndarray,
    offsets: np.ndarray,
    target: int,
    exact: bool,
    rng: np.ndarray,
    out: np.ndarray,
    ptr: np.ndarray,
    filled: np.ndarray,
    ever: np.ndarray,
) -> None:
    """`bucket_codes` then `choose_units`, in one call (arguments as theirs)."""
    codes = np.empty((h.shape[0], L), dtype=np.int64)
    bucket_codes(h, prev, planes, bias_row, tail, K, L, hash_bias, codes)
    choose_units(codes, members, offsets, target, exact, rng, out, ptr, filled, ever)


_warm = False


def warm_up() -> None:
    """Compile (or load from numba's on-disk cache) `hash_and_choose` for the argument types a
    training step passes, once per process (see sparse_kernels.warm_up)."""
    global _warm
    if _warm:
        return
    f32, i64 = np.float32, np.int64
    h, planes = np.ones((1, 2), f32), np.ones((3, 2), f32)
    members = np.array([[0, 1]], dtype=i64)
    offsets = np.array([[0, 1, 2]], dtype=i64)
    out, ptr, filled = np.empty(2, i64), np.empty(2, i64), np.empty(1, i64)
    hash_and_choose(
        h, np.empty(0, i64), planes, np.zeros(2, f32), np.zeros(2, f32), 1, 1, False,
        members, offsets, 1, True, seed_state(0), out, ptr, filled, np.zeros(2, np.bool_),
    )  # fmt: skip
    _warm = True
