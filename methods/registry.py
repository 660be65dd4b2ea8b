"""Which training methods exist, their hyperparameters, and their implementation versions.

Pure Python (no torch): the runner validates job files and derives cell keys from this
table without importing any method's math. Each method's math lives in its own module,
named by `MethodInfo.module`, and is imported only inside a cell.

`version` is part of every cell key: bump it whenever a change to a method's code would
change its results, so that finished cells computed by the old code are not reused.
"""

from __future__ import annotations

from dataclasses import dataclass

from runner.job.params import Param


@dataclass(frozen=True)
class MethodInfo:
    name: str
    version: int
    summary: str
    module: str  # the module holding the math; it defines `build(...)`
    params: tuple[Param, ...] = ()


METHODS: dict[str, MethodInfo] = {
    info.name: info
    for info in [
        MethodInfo(
            name="standard",
            # 2: Adam's fused kernel (methods/base.py; equal to the for-loop up to rounding).
            version=2,
            summary="Exact training of a ReLU MLP (paper §4.1); the yardstick for every ratio.",
            module="methods.standard",
        ),
        MethodInfo(
            name="dropout",
            # 2: the CNN backbone's Adam is the fused kernel (methods/base.py).
            version=2,
            summary="Dropout (Srivastava et al. 2014), computing only the kept units (§5.1).",
            module="methods.dropout",
            params=(
                Param(
                    "keep",
                    float,
                    0.05,
                    "probability of keeping a hidden unit (paper §9.4: "
                    "0.05, to match ALSH's 5% active nodes)",
                    minimum=0.0,
                    exclusive_minimum=True,
                    maximum=1.0,
                ),
                Param(
                    "mask",
                    str,
                    "batch",
                    "batch: one set of kept units per mini-batch, "
                    "computed sparsely (the paper's column sampling); sample: classic "
                    "per-example masks, a dense masked computation",
                    choices=("batch", "sample"),
                ),
            ),
        ),
        MethodInfo(
            name="adaptive_dropout",
            # 2: Adam's fused kernel (methods/base.py).
            version=2,
            summary="Standout (Ba & Frey 2013): keep probability sigmoid(alpha z + beta) "
            "from each unit's own pre-activation (§5.1).",
            module="methods.adaptive_dropout",
            params=(
                Param("alpha", float, 1.0, "slope of the keep probability in the pre-activation"),
                Param(
                    "beta",
                    float,
                    -3.0,
                    "offset of the keep probability; with alpha = 1 "
                    "the mean keep rate at initialisation is about 5% (see the module)",
                ),
            ),
        ),
        MethodInfo(
            name="mc_approx",
            # 2: sample_ratio 0.1 by default (paper §10.2); CNN forward mode recalibrates
            # batch norm with exact passes before evaluating.
            # 3: Adam's fused kernel (methods/base.py).
            # 4: SGD applies the sampled weight gradient as a rank-c update, never formed
            # (FactoredSGD: the same sum, rounded differently); column norms as sums of squares.
            version=4,
            summary="Bernoulli column-row sampling of matrix products (Adelman et al. 2021; "
            "§6.2, Eq. 8).",
            module="methods.mc_approx",
            params=(
                Param(
                    "mode",
                    str,
                    "backward",
                    "backward: exact forward, sampled input and "
                    "weight gradients (what the paper evaluates); forward: sampled forward "
                    "product",
                    choices=("backward", "forward"),
                ),
                Param(
                    "sample_ratio",
                    float,
                    0.1,
                    "expected share of the column-row pairs kept per product, at least min_k "
                    "(paper §10.2: p about 0.1; the reference MLP used 0.9); 0: keep k pairs "
                    "per product instead",
                    minimum=0.0,
                    maximum=1.0,
                ),
                Param(
                    "k",
                    int,
                    10,
                    "expected pairs kept per product when sample_ratio = 0 (paper §9.4: 10, "
                    "about 1% of a 1000-unit product)",
                    minimum=1,
                ),
                Param(
                    "min_k",
                    int,
                    10,
                    "least expected pairs kept per product when sample_ratio > 0 (the "
                    "reference's 10)",
                    minimum=1,
                ),
                Param(
                    "uniform_mix",
                    float,
                    0.0,
                    "share of the uniform distribution mixed into "
                    "Eq. 8's probabilities (the reference code used 0.1)",
                    minimum=0.0,
                    maximum=1.0,
                ),
            ),
        ),
        MethodInfo(
            name="alsh_approx",
            # 2: no second rebuild at an epoch end that the schedule just rebuilt at; the
            # schedule counts from the latest rebuild; `rebuild_unit`.
            # 3: `hash_bias`, `active_size` and `batch_sets`, with new defaults (the bias out
            # of the hash, exactly 5% per example, each example its own set).
            # 4: the CNN backbone's Adam is the fused kernel (methods/base.py).
            # 5: hashing and active-set choice compiled (methods/alsh_select.py: its own
            # random generator, so other draws), and a batch-1 step through the compiled
            # kernels of methods/sparse_kernels.py (sums in another order).
            version=5,
            summary="Asymmetric-LSH active-node selection (Spring & Shrivastava 2017; §5.2).",
            module="methods.alsh_approx",
            params=(
                # Each table keeps 2^K bucket offsets: K = 30 would take 8 GB per table, and
                # beyond ~log2(units) bits nearly every bucket is empty anyway.
                Param(
                    "K",
                    int,
                    6,
                    "bits per hash signature, 2^K buckets per table (paper §9.4: 6)",
                    minimum=1,
                    maximum=16,
                ),
                Param("L", int, 5, "hash tables per layer (paper §9.4: 5)", minimum=1, maximum=64),
                Param(
                    "m",
                    int,
                    3,
                    "norm terms appended by the asymmetric transforms (paper Eq. 3: 3)",
                    minimum=1,
                ),
                Param(
                    "U",
                    float,
                    0.83,
                    "largest weight-vector norm after scaling (Shrivastava & Li 2014: 0.83)",
                    minimum=0.0,
                    exclusive_minimum=True,
                    maximum=1.0,
                ),
                Param(
                    "active_fraction",
                    float,
                    0.05,
                    "share of units active per layer and example (paper §5.2: 5%)",
                    minimum=0.0,
                    exclusive_minimum=True,
                    maximum=1.0,
                ),
                Param(
                    "hash_bias",
                    str,
                    "ignore",
                    "ignore: units hashed by their weights w, queries a/|a| (the authors' "
                    "code); append: [w; b] and [a; 1], which makes deep layers' queries nearly "
                    "identical once activations shrink (see the module)",
                    choices=("ignore", "append"),
                ),
                Param(
                    "active_size",
                    str,
                    "target",
                    "target: exactly active_fraction of the units per example (the last "
                    "bucket needed subsampled); buckets: whole buckets until at least that "
                    "many (the reference's rule, which overshoots)",
                    choices=("target", "buckets"),
                ),
                Param(
                    "batch_sets",
                    str,
                    "example",
                    "example: every example of a mini-batch computes only its own active "
                    "units (SLIDE's semantics); union: every example computes the batch's union",
                    choices=("example", "union"),
                ),
                Param(
                    "rebuild_early",
                    int,
                    100,
                    "rebuild the tables every N examples (or steps) at first (paper §10.2: 100)",
                    minimum=1,
                ),
                Param("rebuild_late", int, 1000, "then every N (paper: 1000)", minimum=1),
                Param(
                    "rebuild_switch",
                    int,
                    10000,
                    "examples (or steps) after which the late schedule applies (paper: 10000)",
                    minimum=0,
                ),
                Param(
                    "rebuild_unit",
                    str,
                    "examples",
                    "what the rebuild schedule counts: training examples (the paper's §10.2 "
                    "counts images) or optimizer steps; the same at batch 1",
                    choices=("examples", "steps"),
                ),
            ),
        ),
    ]
}


def method_info(name: str) -> MethodInfo:
    return METHODS[name]
