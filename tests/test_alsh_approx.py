"""ALSH-APPROX: the transforms, the tables, the active sets (size, per example, input
dependence), the rebuild schedule, and evaluation through the tables."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from methods import alsh_approx, alsh_select
from methods.base import Architecture, TrainSettings
from tests.method_helpers import build, gen


def alsh(arch: Architecture, **hyper: object) -> alsh_approx.ALSHApprox:
    model = build("alsh_approx", arch, **hyper)
    assert isinstance(model, alsh_approx.ALSHApprox)
    return model


# --- the transforms and the tables ----------------------------------------------------------------


def test_asymmetric_transforms_match_the_formulas() -> None:
    weight = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    bias = torch.tensor([4.0, 0.0])
    # With the bias: [w; b] = [3, 0, 4] (norm 5) and [0, 1, 0] (norm 1), scaled by 0.8 / 5.
    p = alsh_approx.transform_p(weight, bias, m=3, U=0.8)
    s = 0.8 / 5
    first = torch.tensor([3 * s, 0, 4 * s, 0.8**2, 0.8**4, 0.8**8])
    second = torch.tensor([0, s, 0, s**2, s**4, s**8])
    torch.testing.assert_close(p, torch.stack([first, second]))
    q = alsh_approx.transform_q(torch.tensor([[3.0, 0.0]]), m=2, append_one=True)
    norm = math.sqrt(3.0**2 + 1.0)  # |[a; 1]|
    torch.testing.assert_close(q, torch.tensor([[3 / norm, 0.0, 1 / norm, 0.5, 0.5]]))
    # Without: w = [3, 0] (norm 3) and [0, 1], scaled by 0.8 / 3; a / |a|.
    p = alsh_approx.transform_p(weight, None, m=2, U=0.8)
    s = 0.8 / 3
    torch.testing.assert_close(p, torch.tensor([[3 * s, 0, 0.8**2, 0.8**4], [0, s, s**2, s**4]]))
    q = alsh_approx.transform_q(torch.tensor([[3.0, 4.0], [0.0, 0.0]]), m=1)
    torch.testing.assert_close(q, torch.tensor([[0.6, 0.8, 0.5], [0.0, 0.0, 0.5]]))


@pytest.mark.parametrize("hash_bias", [False, True])
def test_table_projections_equal_hashing_the_transformed_weights(hash_bias: bool) -> None:
    tables = alsh_approx.LayerTables(
        12, 30, K=6, L=5, m=3, U=0.83, generator=gen(2), hash_bias=hash_bias
    )
    weight, bias = torch.randn(30, 12, generator=gen(4)), torch.randn(30, generator=gen(5))
    transformed = alsh_approx.transform_p(weight, bias if hash_bias else None, m=3, U=0.83)
    expected = transformed @ tables.planes
    torch.testing.assert_close(tables.projections(weight, bias), expected)
    tables.rebuild(weight, bias)
    codes = tables.signatures((expected > 0).numpy())
    for t in range(5):  # every unit sits in the bucket of its own signature
        for unit in range(30):
            assert unit in tables.bucket(t, int(codes[unit, t]))


@pytest.mark.parametrize("hash_bias", [False, True])
def test_query_signature_equals_hashing_the_full_transformed_vector(hash_bias: bool) -> None:
    """The sparse query (only the previous layer's active inputs) hashes exactly like Q(a)
    (or Q([a; 1])) of the full, mostly zero, input vector; a zero input has no direction."""
    tables = alsh_approx.LayerTables(
        12, 30, K=6, L=5, m=3, U=0.83, generator=gen(2), hash_bias=hash_bias
    )
    prev = torch.tensor([1, 4, 5, 9])
    h = torch.randn(4, 4, generator=gen(3))
    h[3] = 0.0
    full = torch.zeros(4, 12).index_copy_(1, prev, h)
    q = alsh_approx.transform_q(full, m=3, append_one=hash_bias)
    expected = tables.signatures((q @ tables.planes > 0).numpy())
    assert np.array_equal(tables.query(h.numpy(), prev.numpy()), expected)
    # The first layer: every input feature (prev None), zero features skipped.
    x = torch.randn(3, 12, generator=gen(6)) * (torch.rand(3, 12, generator=gen(7)) < 0.3)
    q = alsh_approx.transform_q(x, m=3, append_one=hash_bias)
    expected = tables.signatures((q @ tables.planes > 0).numpy())
    assert np.array_equal(tables.query(x.numpy(), None), expected)


def test_active_sets_are_enriched_in_the_largest_inner_products() -> None:
    """Against a random set of the same size, ALSH's active set holds more of each query's
    true top-5% units by w.a (the MIPS it approximates; the bias is not hashed by default).
    With K = 6, L = 5 and freshly initialised weights the enrichment is modest (the constant
    tail of Q(a) dominates the angle), which is the method's own limitation."""
    width, fan_in = 1000, 64
    model = alsh(Architecture(in_features=fan_in, width=width, depth=1, classes=2))
    model.rebuild_tables()
    weight = model.layers[0].weight.detach()
    queries = torch.randn(200, fan_in, generator=gen(4))
    rng = np.random.default_rng(0)
    hits_alsh = hits_random = 0.0
    top = max(1, int(0.05 * width))
    for q in queries:
        true_top = set(torch.topk(weight @ q, top).indices.tolist())
        chosen = set(model.active_for_layer(0, q.unsqueeze(0), None, record=False).units.tolist())
        hits_alsh += len(true_top & chosen) / len(chosen)
        random_set = set(rng.choice(width, size=len(chosen), replace=False).tolist())
        hits_random += len(true_top & random_set) / len(chosen)
    assert hits_alsh > 1.5 * hits_random


# --- active sets ----------------------------------------------------------------------------------


def chooser(model: alsh_approx.ALSHApprox, units: int = 400) -> Any:
    """active(buckets) -> (units, filled) of one example whose bucket in table t is
    `buckets[t]`, through the compiled choice (alsh_select.choose_units) and `model`'s size
    rule and random state."""

    tables: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def active(buckets: list[list[int]]) -> tuple[np.ndarray, int]:
        L = len(buckets)
        if repr(buckets) not in tables:
            members = np.zeros((L, units), dtype=np.int64)
            offsets = np.zeros((L, 3), dtype=np.int64)
            for t, bucket in enumerate(buckets):  # bucket 0: the given units; 1: the others
                members[t] = bucket + [u for u in range(units) if u not in set(bucket)]
                offsets[t] = [0, len(bucket), units]
            tables[repr(buckets)] = members, offsets
        members, offsets = tables[repr(buckets)]
        out = np.empty(units, dtype=np.int64)
        ptr = np.empty(2, dtype=np.int64)
        filled = np.empty(1, dtype=np.int64)
        ever = np.zeros(units, dtype=bool)
        codes = np.zeros((1, L), dtype=np.int64)
        alsh_select.choose_units(
            codes, members, offsets, model.target, model.exact_size, model.rng,
            out, ptr, filled, ever,
        )  # fmt: skip
        chosen = out[: ptr[1]]
        assert np.array_equal(np.flatnonzero(ever), chosen)  # marked as ever active
        assert np.all(np.diff(chosen) > 0)  # sorted, distinct
        return chosen, int(filled[0])

    return active


def test_target_size_takes_exactly_five_percent() -> None:
    """`active_size = "target"`: exactly ceil(5% x 400) = 20 units per example: whole buckets
    while they fit, then a random part of the bucket that crosses the target, then random
    fill when all buckets together hold fewer."""
    model = alsh(Architecture(in_features=16, width=400, depth=1, classes=2))
    assert model.target == 20 and model.exact_size
    active = chooser(model)

    # 12 units, then a bucket of 15 (3 shared): 12 + 8 of its 12 new units, no third table.
    first, second = list(range(12)), list(range(9, 24))
    units, filled = active([first, second, list(range(300, 310))])
    assert len(units) == 20 and filled == 0 and set(first) <= set(units)
    assert set(units) <= set(first) | set(second)
    # The 8 are a uniformly random part of the second bucket's 12 new units: each is taken
    # with probability 2/3. Over 3000 draws each count is Binomial(3000, 2/3) (sd 25.8); the
    # bound 5.6 sd holds for all 12 at once but for a 1e-6 false alarm (union bound).
    counts = np.zeros(24, dtype=int)
    for _ in range(3000):
        counts[active([first, second, []])[0]] += 1
    assert np.all(counts[:12] == 3000)
    assert np.all(np.abs(counts[12:] - 2000) < 5.6 * math.sqrt(3000 * 2 / 9)), counts[12:]
    # One bucket of 100: 20 of them at random.
    units, filled = active([list(range(100, 200)), [], []])
    assert len(units) == 20 and set(units) <= set(range(100, 200)) and filled == 0
    # 11 units collide in all: 9 random units fill up.
    units, filled = active([[1, 2, 3, 4, 5], [4, 5, 6, 7, 8], [9, 10, 11]])
    assert len(units) == 20 and filled == 9 and set(range(1, 12)) <= set(units)
    units, filled = active([[], [], []])
    assert len(units) == 20 and filled == 20


def test_whole_buckets_overshoot_as_the_reference_does() -> None:
    """`active_size = "buckets"`: whole buckets until at least the target (a single bucket
    larger than it is subsampled to it); fill below it."""
    model = alsh(Architecture(in_features=16, width=400, depth=1, classes=2), active_size="buckets")
    active = chooser(model)
    first, second = list(range(12)), list(range(9, 24))
    units, filled = active([first, second, list(range(300, 310))])
    assert set(units) == set(first) | set(second) and len(units) == 24 and filled == 0
    units, _ = active([list(range(100, 200)), list(range(300, 310)), []])
    assert len(units) == 20 and set(units) <= set(range(100, 200))
    units, filled = active([[1, 2, 3, 4, 5], [4, 5, 6, 7, 8], [9, 10, 11]])
    assert len(units) == 20 and filled == 9


def test_every_example_of_a_batch_computes_only_its_own_units() -> None:
    """`batch_sets = "example"`: a mini-batch gathers the union of its examples' sets once,
    but each example's activations, output and gradients are exactly those of the same
    example alone through its own sets; "union" lets each compute the whole union."""
    arch = Architecture(in_features=16, width=200, depth=2, classes=3)
    x = torch.randn(6, 16, generator=gen(9))
    model = alsh(arch)
    model.train()
    saved = model.random_state()
    trace = model.sparse_hidden(x, record=False)
    for layer in trace:
        assert layer.mask is not None
        own = layer.mask.sum(dim=1)
        assert torch.equal(own, torch.full((6,), 10.0))  # 5% of 200 each
        assert len(layer.units) > 10  # the union is larger
        assert torch.equal(layer.h, layer.h * layer.mask)  # nothing outside an example's set
    # The same example alone, through the same sets (given, not drawn again): same numbers.
    for b in range(6):
        h, prev = x[b : b + 1], None
        for layer, linear in zip(trace, model.layers[:-1], strict=False):
            own = layer.units[layer.mask[b] > 0]
            w = linear.weight[own] if prev is None else linear.weight[own][:, prev]
            h = F.relu(h @ w.t() + linear.bias[own])
            full = torch.zeros(200).index_copy_(0, layer.units, layer.h[b])
            torch.testing.assert_close(full[own], h[0])
            outside = full.clone().index_fill_(0, own, 0.0)
            assert not outside.any()  # nothing outside the example's own set
            prev = own
    # The union variant computes every unit of the union for every example.
    union_model = alsh(arch, batch_sets="union")
    union_model.train()
    union_model.set_random_state(saved)
    assert all(layer.mask is None for layer in union_model.sparse_hidden(x, record=False))
    # At batch 1 there is nothing to mask.
    assert all(layer.mask is None for layer in model.sparse_hidden(x[:1], record=False))


def test_active_share_and_units_ever_active_are_recorded() -> None:
    arch = Architecture(in_features=16, width=400, depth=2, classes=3)
    g = gen(3)
    x, y = torch.randn(40, 16, generator=g), torch.randint(0, 3, (40,), generator=g)
    for batch_sets, batch in (("example", 10), ("union", 10), ("example", 1)):
        model = alsh(arch, batch_sets=batch_sets)
        opt = model.make_optimizer(
            TrainSettings(lr=1e-3, optimizer="adam", momentum=0.0, batch_size=batch)
        )
        model.train()
        seen: list[set[int]] = [set(), set()]
        for start in range(0, 40, batch):
            loss = F.nll_loss(model(x[start : start + batch]), y[start : start + batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            rows = {b.leaf.shape[0] for b in model.blocks[:1]}
            assert rows  # the first block: layer 1's weights
            for i, block in enumerate(model.blocks[0:4:2]):  # layers 1 and 2: weights
                assert block.where.rows is not None
                seen[i] |= set(block.where.rows.tolist())
        stats = model.epoch_stats()
        for i in (1, 2):
            assert stats[f"ever_active.layer{i}"] == pytest.approx(len(seen[i - 1]) / 400)
            if batch_sets == "example" or batch == 1:
                assert stats[f"active_share.layer{i}"] == pytest.approx(0.05)
            else:  # every example computes the union: its share is the union's
                assert stats[f"active_share.layer{i}"] == pytest.approx(
                    stats[f"active_units.layer{i}"] / 400
                )
                assert stats[f"active_share.layer{i}"] > 0.1


def test_overlap_statistics_are_exact() -> None:
    sets = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]], dtype=bool)
    pairs = [1 / 3, 0.0, 0.0]  # {0,1} vs {0,2}; {0,1} vs {3}; {0,2} vs {3}
    assert alsh_approx.mean_pairwise_jaccard(sets) == pytest.approx(sum(pairs) / 3)
    assert math.isnan(alsh_approx.mean_pairwise_jaccard(sets[:1]))
    # Random 50-of-1000 sets: the expectation against a simulation (2000 pairs: the mean's
    # standard error is about 0.0005).
    rng = np.random.default_rng(1)
    draws = np.zeros((2000, 2, 1000), dtype=bool)
    for d in draws:
        for row in d:
            row[rng.choice(1000, size=50, replace=False)] = True
    inter = (draws[:, 0] & draws[:, 1]).sum(axis=1)
    union = (draws[:, 0] | draws[:, 1]).sum(axis=1)
    assert float((inter / union).mean()) == pytest.approx(
        alsh_approx.random_set_jaccard(50, 1000), abs=0.002
    )


def digits_inputs(n: int) -> torch.Tensor:
    """Real inputs (scikit-learn's bundled digits, standardised), not Gaussian noise: the
    question is how a real network's deep layers see real data."""
    from sklearn.datasets import load_digits

    images = torch.from_numpy(load_digits().data[:n]).float()
    return (images - images.mean()) / images.std()


def test_bias_in_the_hash_makes_deep_layers_pick_the_same_units_for_every_input() -> None:
    """The confound an independent review found: with the bias appended ([w; b], [a; 1]) and
    no rescaling in the sparse forward pass, activations shrink with depth until the constant
    dominates every query, and deep layers choose nearly the same units whatever the input
    (the paper's Fig. 15 symptom, by construction). Without it (the authors' a / |a|), the
    deep layers' sets stay close to random sets of the same size at initialisation (the first
    layer's overlap, 0.17 either way, is the digits' own similarity: MIPS at work).
    Measured at depth 7: append 0.39 / 0.41 / 0.81 at layers 3 / 4 / 5, ignore 0.04 / 0.04 /
    0.04, random sets 0.026."""
    arch = Architecture(in_features=64, width=1000, depth=5, classes=10)
    x = digits_inputs(128)
    overlap = {}
    for hash_bias in ("append", "ignore"):
        model = alsh(arch, hash_bias=hash_bias)
        model.eval()
        overlap[hash_bias] = model.probe_stats(x, batch_size=1)
    random = overlap["ignore"]["active_overlap_random"]
    assert random == pytest.approx(0.0256, abs=0.001)
    deep = [overlap["append"][f"active_overlap.layer{i}"] for i in (3, 4, 5)]
    assert min(deep) > 8 * random and max(deep) > 0.5, deep
    kept = [overlap["ignore"][f"active_overlap.layer{i}"] for i in (3, 4, 5)]
    assert max(kept) < 2.5 * random, kept


# --- the network as it trains ---------------------------------------------------------------------


def test_evaluation_through_the_tables() -> None:
    """`approx_log_probs`: every example through its own active sets, whatever the chunk
    (an example alone gives the same output as within a batch, given the same draws), the
    training randomness untouched, and the exact network when every unit is active."""
    arch = Architecture(in_features=16, width=200, depth=3, classes=4)
    x = torch.randn(12, 16, generator=gen(7))
    model = alsh(arch, batch_sets="union")
    model.eval()
    before = model.random_state()
    out = model.approx_log_probs(x)
    assert out is not None and out.shape == (12, 4)
    after = model.random_state()
    assert torch.equal(after["hash_rng"], before["hash_rng"])
    assert torch.equal(after["sampling_rng"], before["sampling_rng"])
    assert model.per_example is False  # restored
    # Not the exact network (5% of the units), but an example's output does not depend on
    # the batch it is in: each example alone, with the draws it had in the batch, agrees.
    with torch.no_grad():
        assert not torch.allclose(out, model(x))
    trace_model = alsh(arch)
    trace_model.eval()
    torch.testing.assert_close(trace_model.approx_log_probs(x), out)  # same draws, same sets
    full = alsh(arch, active_fraction=1.0)
    full.eval()
    with torch.no_grad():
        torch.testing.assert_close(full.approx_log_probs(x), full(x))


# --- the rebuild schedule -------------------------------------------------------------------------


def test_rebuild_schedule_follows_the_paper() -> None:
    arch = Architecture(in_features=8, width=40, depth=2, classes=2)
    for batch_size in (1, 20):
        model = alsh(arch)
        seen = 0
        rebuilt_at = []
        for step in range(1, 30_000 // batch_size + 1):
            seen += batch_size
            before = model.rebuilds
            model.upkeep(step, seen)
            if model.rebuilds > before:
                rebuilt_at.append(seen)
        early = [s for s in rebuilt_at if s <= 10_000]
        late = [s for s in rebuilt_at if s > 10_000]
        assert early == list(range(100, 10_001, 100))  # every 100 examples up to 10000
        assert late == list(range(11_000, 30_001, 1000))  # then every 1000
        # The schedule has just rebuilt at 30000, the epoch's last step: no second rebuild of
        # the same weights at the epoch end.
        before = model.rebuilds
        model.end_epoch()
        assert model.rebuilds == before
        # Otherwise the epoch end rebuilds, and the schedule counts from there.
        model.upkeep(step + 1, 30_000 + 400)
        model.end_epoch()
        assert model.rebuilds == before + 1
        model.upkeep(step + 2, 30_400 + 900)
        assert model.rebuilds == before + 1  # 900 < 1000 since the epoch-end rebuild
        model.upkeep(step + 3, 30_400 + 1000)
        assert model.rebuilds == before + 2


def test_rebuild_schedule_can_count_steps() -> None:
    arch = Architecture(in_features=8, width=40, depth=2, classes=2)
    model = alsh(arch, rebuild_unit="steps")
    rebuilt_at = []
    for step in range(1, 12_001):
        before = model.rebuilds
        model.upkeep(step, 20 * step)  # batch 20
        if model.rebuilds > before:
            rebuilt_at.append(step)
    assert rebuilt_at == [*range(100, 10_001, 100), 11_000, 12_000]
