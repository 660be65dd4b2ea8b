"""Plant plausible mathematical mistakes in the methods, one at a time, and check that the
tests catch every one of them.

Not collected by pytest (no test_ prefix). Run from anywhere:

    python tests/mutants/run_method_mutants.py            # baseline + every mutant
    python tests/mutants/run_method_mutants.py --only mc_uniform_pairs dropout_shared_layers
    python tests/mutants/run_method_mutants.py --tests tests/test_methods.py   # other suites
    python tests/mutants/run_method_mutants.py --list

How each mutant is planted and run (a snapshot of the code, a fresh copy per mutant, a check
that the copy's mutated module is the one imported) is in common.py. In the copy, with
PYTHONPATH pointing at it and torch on one thread:

    python -m pytest -x -q -p no:cacheprovider tests/test_method_math.py tests/test_methods.py \
        tests/test_sparse_kernels.py

Prints a table (mutant, killed, by which test, seconds). Exit status 1 if the baseline fails,
any mutant survives, or a mutant only breaks collection (an invalid mutant, not a kill).
"""

from __future__ import annotations

import sys

from common import Mutant, main

DEFAULT_TESTS = (
    "tests/test_method_math.py",
    "tests/test_methods.py",
    "tests/test_sparse_kernels.py",
)

MUTANTS = [
    # 1. MC-APPROX: uniform pairs instead of Eq. 8.
    Mutant(
        "mc_uniform_pairs",
        "methods/mc_approx.py",
        "    p = keep_probabilities(a_norms.detach(), b_norms.detach(), k, sampling.uniform_mix)\n",
        "    p = keep_probabilities(\n"
        "        torch.ones_like(a_norms), torch.ones_like(b_norms), k, sampling.uniform_mix\n"
        "    )\n",
        "choose_pairs: p_i = k / n (uniform), not Eq. 8",
    ),
    # 2. MC-APPROX: one factor's norms only.
    Mutant(
        "mc_only_a_norms",
        "methods/mc_approx.py",
        "    p = keep_probabilities(a_norms.detach(), b_norms.detach(), k, sampling.uniform_mix)\n",
        "    p = keep_probabilities(\n"
        "        a_norms.detach(), torch.ones_like(b_norms), k, sampling.uniform_mix\n"
        "    )\n",
        "choose_pairs: p_i from |A[:, i]| only",
    ),
    Mutant(
        "mc_only_b_norms",
        "methods/mc_approx.py",
        "    p = keep_probabilities(a_norms.detach(), b_norms.detach(), k, sampling.uniform_mix)\n",
        "    p = keep_probabilities(\n"
        "        torch.ones_like(a_norms), b_norms.detach(), k, sampling.uniform_mix\n"
        "    )\n",
        "choose_pairs: p_i from |B[i, :]| only",
    ),
    Mutant(
        "mc_grad_input_without_weight_norms",
        "methods/mc_approx.py",
        "        norms = None if layer.sampling.pairs_to_keep(units) >= units "
        "else layer.weight_row_norms()\n",
        "        norms = (\n"
        "            None\n"
        "            if layer.sampling.pairs_to_keep(units) >= units\n"
        "            else torch.ones(units, dtype=grad_out.dtype)\n"
        "        )\n",
        "_layer_backward: input-gradient pairs by |dY[:, i]| only (weight rows ignored)",
    ),
    Mutant(
        "mc_grad_weight_by_inputs_only",
        "methods/mc_approx.py",
        "        else choose_pairs(grad_out.norm(dim=1), x.norm(dim=1), "
        "layer.sampling, layer.generator)\n",
        "        else choose_pairs(\n"
        "            torch.ones(len(x), dtype=x.dtype), x.norm(dim=1), "
        "layer.sampling, layer.generator\n"
        "        )\n",
        "_layer_backward: weight-gradient pairs by |x_b| only (dY rows ignored)",
    ),
    Mutant(
        "mc_tracked_norms_frozen",
        "methods/mc_approx.py",
        "        self.row_sq.add_(w_dot_g, alpha=-2 * lr).add_(g_sq, alpha=lr * lr)\n",
        "        del w_dot_g, g_sq  # the SGD step is not applied to the tracked norms\n",
        "MCLinear.after_sgd_step: tracked weight-row norms stale between exact re-reads",
    ),
    # 3. MC-APPROX: clamped pairs scaled by the unclamped 1/p.
    Mutant(
        "mc_clamped_scaled_unclamped",
        "methods/mc_approx.py",
        "    return kept, p.index_select(0, kept).reciprocal()\n\n\ndef column_norms(",
        "    w = a_norms.detach() * b_norms.detach()\n"
        "    raw = k * w / w.sum()  # Eq. 8 before clamping at 1\n"
        "    return kept, raw.index_select(0, kept).reciprocal()\n\n\ndef column_norms(",
        "choose_pairs: scale 1 / (k w_i / sum w) even where p_i is clamped at 1",
    ),
    Mutant(
        "mc_sqrt_scale",
        "methods/mc_approx.py",
        "    return kept, p.index_select(0, kept).reciprocal()\n\n\ndef column_norms(",
        "    return kept, p.index_select(0, kept).rsqrt()\n\n\ndef column_norms(",
        "choose_pairs: scale 1 / sqrt(p) (Drineas' D on one factor only)",
    ),
    # 4. MC-APPROX: a sampled product biased by 10%.
    Mutant(
        "mc_grad_weight_biased",
        "methods/mc_approx.py",
        "        coef = grad_out.index_select(0, kept) * scale.unsqueeze(1)  # (c, out)\n",
        "        coef = grad_out.index_select(0, kept) * (1.1 * scale.unsqueeze(1))  # (c, out)\n",
        "_layer_backward: sampled grad_w x 1.1",
    ),
    Mutant(
        "mc_grad_input_biased",
        "methods/mc_approx.py",
        '        layer.count("grad_input", kept_pairs)\n',
        "        if norms is not None:  # sampled\n"
        "            grad_x = grad_x * 1.1\n"
        '        layer.count("grad_input", kept_pairs)\n',
        "_layer_backward: sampled grad_input x 1.1",
    ),
    Mutant(
        "mc_factored_gradient_overwritten",
        "methods/mc_approx.py",
        "        if self.step_state.factors is not None:\n",
        "        if False:  # a second backward pass before the step replaces the first\n",
        "MCLinear.defer_weight_gradient: two backward passes before a step keep only the last",
    ),
    Mutant(
        "mc_sampled_matmul_biased",
        "methods/mc_approx.py",
        "    a_kept = a.index_select(1, kept) * scale  # (N, c), scaled elementwise\n",
        "    a_kept = a.index_select(1, kept) * (1.1 * scale)  # (N, c), scaled elementwise\n",
        "sampled_matmul: every sampled product (grad_input, forward) x 1.1",
    ),
    Mutant(
        "mc_forward_biased",
        "methods/mc_approx.py",
        "        y, kept = sampled_matmul(x, self.weight.t(), self.sampling, self.generator)\n",
        "        y, kept = sampled_matmul(x, self.weight.t(), self.sampling, self.generator)\n"
        "        if self.sampling.pairs_to_keep(x.shape[1]) < x.shape[1]:  # sampled\n"
        "            y = y * 1.1\n",
        "MCLinear.sampled_forward: sampled forward product x 1.1",
    ),
    # 5. ALSH-APPROX: rebuilds that do nothing after the first build (stale tables).
    Mutant(
        "alsh_layer_tables_stale",
        "methods/alsh_approx.py",
        "    def rebuild(self, weight: torch.Tensor, bias: torch.Tensor) -> None:\n",
        "    def rebuild(self, weight: torch.Tensor, bias: torch.Tensor) -> None:\n"
        '        if getattr(self, "_built", False):\n'
        "            return\n"
        "        self._built = True\n",
        "LayerTables.rebuild: a no-op after the first build",
    ),
    Mutant(
        "alsh_rebuild_tables_stale",
        "methods/alsh_approx.py",
        "            for layer, tables in zip(self.layers, self.tables, strict=False):\n",
        "            for layer, tables in (\n"
        "                zip(self.layers, self.tables, strict=False) if self._stale else ()\n"
        "            ):\n",
        "ALSHApprox.rebuild_tables: rebuilds only stale (first-use) tables",
    ),
    # 6. DROPOUT: the same kept units in every layer.
    Mutant(
        "dropout_shared_layers",
        "methods/dropout.py",
        "        kept = kept_units(self.arch.width, self.keep, self.sampling_generator)\n",
        '        if layer == 0 or not hasattr(self, "_shared_kept"):\n'
        "            self._shared_kept = kept_units(\n"
        "                self.arch.width, self.keep, self.sampling_generator\n"
        "            )\n"
        "        kept = self._shared_kept\n",
        "BatchMaskDropout: one draw per step reused for every layer",
    ),
    Mutant(
        "dropout_same_every_step",
        "methods/dropout.py",
        "        kept = kept_units(self.arch.width, self.keep, self.sampling_generator)\n",
        "        kept = kept_units(\n"
        "            self.arch.width, self.keep, torch.Generator().manual_seed(1000 + layer)\n"
        "        )\n",
        "BatchMaskDropout: a generator re-seeded per layer: the same mask every step",
    ),
    # 7. Sparse blocks: active rows x ALL columns.
    Mutant(
        "sparse_rows_by_all_columns",
        "methods/sparse.py",
        "            w = self._block(layer.weight, active.units, prev, record)"
        "  # (|S_i|, |S_{i-1}|)\n",
        "            w = self._block(layer.weight, active.units, None, record)  # (|S_i|, fan_in)\n"
        "            if prev is not None:  # the input back at full width, zeros elsewhere\n"
        "                full = torch.zeros(len(h), layer.in_features, dtype=h.dtype)\n"
        "                h = full.index_copy(1, prev, h)\n",
        "SparseMLP.sparse_hidden: block W[S_i, :] on a zero-padded input, not W[S_i, S_{i-1}]",
    ),
    # 8. The compiled single-example step (ALSH-APPROX at batch 1).
    Mutant(
        "compiled_adam_bias_correction_off_by_one",
        "methods/sparse_kernels.py",
        "    step_size = np.float32(lr / (1.0 - beta1**step))\n",
        "    step_size = np.float32(lr / (1.0 - beta1 ** (step + 1)))\n",
        "sparse_kernels.adam_block: bias correction of the next step",
    ),
    Mutant(
        "compiled_relu_gradient_through_dead_units",
        "methods/sparse_kernels.py",
        "        if relu and not h_out[j] > 0.0:",
        "        if relu and not h_out[j] >= 0.0:",
        "sparse_kernels.layer_backward: gradient passed through units whose relu was 0",
    ),
]


if __name__ == "__main__":
    sys.exit(main(MUTANTS, DEFAULT_TESTS, __doc__.split("\n\n")[0]))
