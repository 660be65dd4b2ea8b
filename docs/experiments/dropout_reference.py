"""Plain-PyTorch reference for DROPOUT and standout on digits, and the diagnostics of
docs/findings-dropout.md. Independent of methods/ (it only borrows the project's digits
split and normalisation, so that the numbers are comparable with the runner's).

    python docs/experiments/dropout_reference.py train --model dropout --keep 0.05 --depth 3 \
        --batch 20 --lr 1e-2
    python docs/experiments/dropout_reference.py diagnose --model standout --beta -2.94 ...
    python docs/experiments/dropout_reference.py gradsnr --model dropout --keep 0.05 --depth 3
    python docs/experiments/dropout_reference.py equivalence      # project == reference?
    python docs/experiments/dropout_reference.py tables /tmp/dk   # the runner sweep's tables

Models (hidden layer = Linear then ReLU, log-softmax output, NLL loss, plain SGD):
    standard       no dropout
    dropout        nn.Dropout(p = 1 - keep) after every hidden ReLU (a mask per example)
    dropout_batch  the same, but one mask per mini-batch, shared by its examples
    standout       z = W h + b, pi = sigmoid(alpha z + beta), mask ~ Bernoulli(pi),
                   h' = relu(z) * mask in training, relu(z) * pi at evaluation
Always one torch thread.
"""
# ruff: noqa: B023  (diagnose's closures run only within their own loop iteration)

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch
import torch.nn.functional as F
from torch import nn

torch.set_num_threads(1)
# Run from the repository root (or from docs/experiments/ inside it): runner/ gives the data.
sys.path[:0] = [os.getcwd(), str(Path(__file__).resolve().parents[2])]


def digits(data_root: str = "/tmp/data"):
    from runner.datasets.loading import load_splits

    return load_splits("digits", Path(data_root), 0, download=False, flatten=True)


# --- the reference layers -------------------------------------------------------------------


class BatchDropout(nn.Module):
    """Inverted dropout with one mask per mini-batch (what mask = "batch" computes sparsely).
    Draws torch.rand(width) per call, like methods/dropout.py, so a shared generator
    reproduces the project's kept sets exactly."""

    def __init__(self, keep: float, generator: torch.Generator | None = None):
        super().__init__()
        self.keep, self.generator = keep, generator

    def forward(self, h):
        if not self.training:
            return h
        mask = torch.rand(h.shape[1], generator=self.generator) < self.keep
        return h * mask / self.keep


class SampleDropout(BatchDropout):
    """Classic inverted dropout, a mask per example (nn.Dropout, but with a generator)."""

    def forward(self, h):
        if not self.training:
            return h
        mask = torch.rand(h.shape, generator=self.generator) < self.keep
        return h * mask / self.keep


class StandoutLayer(nn.Module):
    def __init__(self, linear: nn.Linear, alpha: float, beta: float, generator=None):
        super().__init__()
        self.linear, self.alpha, self.beta, self.generator = linear, alpha, beta, generator

    def forward(self, h):
        z = self.linear(h)
        pi = torch.sigmoid(self.alpha * z.detach() + self.beta)
        if self.training:
            return F.relu(z) * torch.bernoulli(pi, generator=self.generator)
        return F.relu(z) * pi


def make_model(
    kind,
    depth,
    width,
    keep=1.0,
    alpha=1.0,
    beta=-3.0,
    n_in=64,
    classes=10,
    generator=None,
    torch_dropout=True,
):
    """nn.Sequential(hidden block x depth, output Linear, LogSoftmax); `generator` (masks)
    only for the equivalence check, which needs the project's exact draws."""
    blocks: list[nn.Module] = []
    fan_in = n_in
    for _ in range(depth):
        linear = nn.Linear(fan_in, width)
        if kind == "standout":
            blocks.append(StandoutLayer(linear, alpha, beta, generator))
        elif kind == "dropout":
            drop = nn.Dropout(1 - keep) if torch_dropout else SampleDropout(keep, generator)
            blocks.append(nn.Sequential(linear, nn.ReLU(), drop))
        elif kind == "dropout_batch":
            blocks.append(nn.Sequential(linear, nn.ReLU(), BatchDropout(keep, generator)))
        else:
            blocks.append(nn.Sequential(linear, nn.ReLU()))
        fan_in = width
    return nn.Sequential(*blocks, nn.Linear(fan_in, classes), nn.LogSoftmax(dim=1))


def linears(model):
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def hidden_outputs(model, x):
    """What every hidden layer hands to the next one (after ReLU and mask), and the logits."""
    outs, h = [], x
    for block in list(model)[:-2]:
        h = block(h)
        outs.append(h)
    return outs, model[-2](h)


@torch.no_grad()
def accuracy(model, x, y):
    model.eval()
    logp = model(x)
    model.train()
    return float((logp.argmax(1) == y).float().mean()), float(F.nll_loss(logp, y))


# --- training -------------------------------------------------------------------------------


def train(model, splits, batch, lr, epochs, seed=0, on_step=None):
    """Plain SGD. Returns test accuracy, last epoch's mean train loss, whether any step's
    loss was non-finite and at which step first, and the per-epoch losses."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    shuffle = torch.Generator().manual_seed(seed + 1)
    x, y = splits.x_train, splits.y_train
    step, first_bad, epoch_losses = 0, None, []
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=shuffle)
        total, n = 0.0, 0
        for start in range(0, len(y), batch):
            idx = order[start : start + batch]
            loss = F.nll_loss(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            if on_step is not None:
                on_step(step, model, loss.item())
            opt.step()
            step += 1
            if not math.isfinite(loss.item()) and first_bad is None:
                first_bad = step
            total, n = total + loss.item(), n + 1
        epoch_losses.append(total / n)
    acc, test_loss = accuracy(model, splits.x_test, splits.y_test)
    return {
        "test_acc": acc,
        "test_loss": test_loss,
        "final_train_loss": epoch_losses[-1],
        "diverged": first_bad is not None,
        "first_nonfinite_step": first_bad,
        "epoch_losses": epoch_losses,
    }


def build(args):
    torch.manual_seed(args.seed)
    return make_model(args.model, args.depth, args.width, args.keep, args.alpha, args.beta)


def label(args):
    hyper = {"standout": f" alpha={args.alpha:g} beta={args.beta:g}", "standard": ""}.get(
        args.model, f" keep={args.keep:g}"
    )
    return f"{args.model}{hyper} depth={args.depth} batch={args.batch}"


def cmd_train(args):
    splits = digits()
    for lr in args.lr:
        try:
            r = train(build(args), splits, args.batch, lr, args.epochs, args.seed)
        except RuntimeError as exc:  # standout: NaN pre-activations make bernoulli() raise
            print(f"{label(args)} lr={lr:g}: CRASHED ({str(exc)[:60]}): diverged", flush=True)
            continue
        curve = " ".join(f"{v:.3g}" for v in r["epoch_losses"])
        print(
            f"{label(args)} lr={lr:g}: test_acc {r['test_acc']:.4f} final_train_loss "
            f"{r['final_train_loss']:.4g} diverged {r['diverged']} "
            f"(first non-finite step {r['first_nonfinite_step']}) epoch losses: {curve}",
            flush=True,
        )


# --- diagnostics ----------------------------------------------------------------------------


def rms(t):
    return float(t.pow(2).mean().sqrt())


@torch.no_grad()
def snapshot(model, x, draws=20):
    """Per hidden layer: rms of its output in training mode (mean over `draws` masks) and
    in eval mode, the relative deviation ||h_train - h_eval|| / ||h_eval|| (the runner's
    probe_rel_error), the fraction of units that are zero for every input in eval mode
    (dead), and the rms of the (centred) logits."""
    model.eval()
    eval_outs, eval_logits = hidden_outputs(model, x)
    model.train()
    train_rms = dev = None
    train_logit = 0.0
    for _ in range(draws):
        outs, logits = hidden_outputs(model, x)
        r = [rms(o) for o in outs]
        d = [float((o - e).norm() / e.norm()) for o, e in zip(outs, eval_outs, strict=True)]
        train_rms = r if train_rms is None else [a + b for a, b in zip(train_rms, r, strict=True)]
        dev = d if dev is None else [a + b for a, b in zip(dev, d, strict=True)]
        train_logit += rms(logits - logits.mean(1, keepdim=True))
    return {
        "train_rms": [v / draws for v in train_rms],
        "rel_dev": [v / draws for v in dev],
        "eval_rms": [rms(o) for o in eval_outs],
        "dead": [float((o.abs().amax(0) == 0).float().mean()) for o in outs],
        "train_logit_rms": train_logit / draws,
        "eval_logit_rms": rms(eval_logits - eval_logits.mean(1, keepdim=True)),
        # how much the eval logits vary from input to input (0: the same output for all)
        "eval_logit_spread": float(eval_logits.std(0).pow(2).mean().sqrt()),
    }


def cmd_diagnose(args):
    splits = digits()
    probe = splits.x_train[:256]
    fmt = lambda vs: "[" + ", ".join(f"{v:.3g}" for v in vs) + "]"  # noqa: E731
    for lr in args.lr:
        model = build(args)
        print(f"== {label(args)} lr={lr:g} epochs={args.epochs}")
        window = max(1, args.window)
        acc = {"loss": [], "grads": []}
        checkpoints = set(args.at)

        def report(step, model):
            s = snapshot(model, probe)
            va, vl = accuracy(model, splits.x_val, splits.y_val)
            print(
                f"  step {step:>6}: train-mode rms {fmt(s['train_rms'])}  eval rms "
                f"{fmt(s['eval_rms'])}  train/eval rel dev {fmt(s['rel_dev'])}  dead "
                f"{fmt(s['dead'])}  logit rms train "
                f"{s['train_logit_rms']:.3g} eval {s['eval_logit_rms']:.3g} (spread over "
                f"inputs {s['eval_logit_spread']:.3g})  val acc "
                f"{va:.3f} val loss {vl:.3g}",
                flush=True,
            )

        def on_step(step, model, loss):
            if step in checkpoints:
                report(step, model)
            acc["loss"].append(loss)
            acc["grads"].append(
                [
                    float(m.weight.grad.norm()) if m.weight.grad is not None else float("nan")
                    for m in linears(model)
                ]
            )
            if len(acc["loss"]) == window:
                finite = [v for v in acc["loss"] if math.isfinite(v)]
                g = [sum(c) / len(c) for c in zip(*acc["grads"], strict=True)]
                print(
                    f"  steps {step + 1 - window:>6}-{step:<6} loss mean "
                    f"{sum(finite) / max(len(finite), 1):.4g} max {max(acc['loss']):.4g} "
                    f"non-finite {len(acc['loss']) - len(finite)}  |grad W| per layer "
                    f"{fmt(g)}",
                    flush=True,
                )
                acc["loss"].clear()
                acc["grads"].clear()

        r = train(model, splits, args.batch, lr, args.epochs, args.seed, on_step)
        report("end", model)
        print(
            f"  result: test_acc {r['test_acc']:.4f} final_train_loss "
            f"{r['final_train_loss']:.4g} diverged {r['diverged']} first non-finite step "
            f"{r['first_nonfinite_step']}",
            flush=True,
        )


def cmd_gradsnr(args):
    """At initialisation, on 256 training examples: the gradient of every weight matrix
    under `--draws` independent masks, against the exact network's gradient (the same
    weights, no mask). Per layer: cosine(mean masked gradient, exact gradient), and the
    signal-to-noise ratio ||mean|| / rms(||g - mean||) of a single draw."""
    splits = digits()
    x, y = splits.x_train[:256], splits.y_train[:256]
    model = build(args)

    def grads():
        model.zero_grad()
        F.nll_loss(model(x), y).backward()
        return [m.weight.grad.clone() for m in linears(model)]

    model.eval()
    exact = grads()
    model.train()
    draws = [grads() for _ in range(args.draws)]
    fmt = lambda vs: "[" + ", ".join(f"{v:.3g}" for v in vs) + "]"  # noqa: E731
    cos, snr, ratio = [], [], []
    for i, e in enumerate(exact):
        g = torch.stack([d[i] for d in draws])
        mean = g.mean(0)
        noise = (g - mean).flatten(1).norm(dim=1).pow(2).mean().sqrt()
        cos.append(float(F.cosine_similarity(mean.flatten(), e.flatten(), dim=0)))
        snr.append(float(mean.norm() / noise))
        ratio.append(float(g.flatten(1).norm(dim=1).mean() / e.norm()))
    print(
        f"{label(args)}: per layer (hidden..., output), {args.draws} mask draws on 256 "
        f"examples: cos(E[g], g_exact) {fmt(cos)}  single-draw SNR {fmt(snr)}  "
        f"|g| / |g_exact| {fmt(ratio)}",
        flush=True,
    )


# --- equivalence with the project's implementation -----------------------------------------


def cmd_equivalence(args):
    """Same weights, same masks (the same generator draws), same batches: the project's
    model and optimizer against the reference's, step for step."""
    import methods
    from methods.base import Architecture, TrainSettings

    splits = digits()
    arch = Architecture(in_features=64, width=args.width, depth=args.depth, classes=10)
    cases = [
        ("dropout", {"keep": args.keep, "mask": "batch"}, "dropout_batch"),
        ("dropout", {"keep": args.keep, "mask": "sample"}, "dropout"),
        ("adaptive_dropout", {"alpha": args.alpha, "beta": args.beta}, "standout"),
    ]
    for name, hyper, kind in cases:
        for batch in (1, 20):
            proj = methods.build(
                name,
                arch,
                hyper,
                torch.Generator().manual_seed(args.seed),
                torch.Generator().manual_seed(123),
            )
            ref = make_model(
                kind,
                args.depth,
                args.width,
                args.keep,
                args.alpha,
                args.beta,
                generator=torch.Generator().manual_seed(123),
                torch_dropout=False,
            )
            with torch.no_grad():
                for a, b in zip(
                    linears(ref),
                    [m for m in proj.modules() if isinstance(m, nn.Linear)],
                    strict=True,
                ):
                    a.weight.copy_(b.weight)
                    a.bias.copy_(b.bias)
            popt = proj.make_optimizer(TrainSettings(args.lr[0], "sgd", 0.0, batch))
            ropt = torch.optim.SGD(ref.parameters(), lr=args.lr[0])
            proj.train()
            ref.train()
            worst_loss = 0.0
            for step in range(args.steps):
                idx = torch.arange(step * batch, (step + 1) * batch) % len(splits.y_train)
                xb, yb = splits.x_train[idx], splits.y_train[idx]
                lp, lr_ = F.nll_loss(proj(xb), yb), F.nll_loss(ref(xb), yb)
                popt.zero_grad()
                ropt.zero_grad()
                lp.backward()
                lr_.backward()
                popt.step()
                ropt.step()
                worst_loss = max(worst_loss, abs(float(lp.detach()) - float(lr_.detach())))
            proj.eval()
            ref.eval()
            with torch.no_grad():
                wdiff = max(
                    float((a.weight - b.weight).abs().max())
                    for a, b in zip(
                        linears(ref),
                        [m for m in proj.modules() if isinstance(m, nn.Linear)],
                        strict=True,
                    )
                )
                odiff = float((proj(splits.x_test) - ref(splits.x_test)).abs().max())
            print(
                f"{name} {hyper} batch {batch}: {args.steps} SGD steps at lr {args.lr[0]:g}: "
                f"max |loss diff| {worst_loss:.2e}, max |weight diff| {wdiff:.2e}, max "
                f"|eval log-prob diff| {odiff:.2e}, last loss {float(lp.detach()):.4g}",
                flush=True,
            )


# --- tables of the runner's sweep (jobs/dropout_keep.toml) --------------------------------


def cmd_tables(args):
    """Test accuracy / final-epoch train loss per configuration and learning rate, one table
    per depth and batch size, from a results folder of jobs/dropout_keep.toml."""
    import ast
    import glob
    import json

    import pandas as pd

    rows = [pd.read_parquet(f) for f in glob.glob(f"{args.results}/cells/*.parquet")]
    df = pd.concat(rows).to_dict("records")
    for f in glob.glob(f"{args.results}/failed/*.json"):  # standout: bernoulli(NaN) raised
        with open(f) as fh:
            v = json.load(fh)["values"]
        df.append({**(v if isinstance(v, dict) else ast.literal_eval(v)), "failed": True})

    def config(r):
        if r["method"] == "dropout":
            return f"dropout mask={r['dropout.mask']} keep={r['dropout.keep']:g}"
        if r["method"] == "adaptive_dropout":
            return f"standout beta={r['adaptive_dropout.beta']:g}"
        return "standard"

    def cell(r):
        if r.get("failed") is True:
            return "FAILED (NaN)"
        loss = r["final_train_loss"]
        loss_text = f"{loss:.3g}" if math.isfinite(loss) else "nan"
        text = f"{r['test_accuracy']:.3f} / {loss_text}"
        return text + (" DIV" if r["diverged"] else "")

    for depth in (1, 3):
        for batch in (1, 20):
            sub = [r for r in df if r["depth"] == depth and r["batch_size"] == batch]
            lrs = sorted({r["lr"] for r in sub})
            table = {(config(r), r["lr"]): cell(r) for r in sub}
            configs = sorted({c for c, _ in table}, key=lambda c: (c != "standard", c))
            print(
                f"\n### depth {depth}, batch {batch}: test accuracy / final-epoch train loss "
                "(DIV: the loss became non-finite)\n"
            )
            print("| configuration | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |")
            print("|---" * (len(lrs) + 1) + "|")
            for c in configs:
                print(f"| {c} | " + " | ".join(table.get((c, lr), "–") for lr in lrs) + " |")


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("command", choices=["train", "diagnose", "gradsnr", "equivalence", "tables"])
    p.add_argument(
        "--model", default="dropout", choices=["standard", "dropout", "dropout_batch", "standout"]
    )
    p.add_argument("--keep", type=float, default=0.05)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--beta", type=float, default=-2.94)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--lr", type=float, nargs="+", default=[1e-2])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--window", type=int, default=63, help="diagnose: steps per loss line")
    p.add_argument(
        "--at",
        type=int,
        nargs="*",
        default=[0, 10, 100, 1000],
        help="diagnose: steps at which to take a snapshot",
    )
    p.add_argument("--steps", type=int, default=200, help="equivalence: SGD steps")
    p.add_argument("--draws", type=int, default=200, help="gradsnr: mask draws")
    p.add_argument("results", nargs="?", default="/tmp/dk", help="tables: results folder")
    args = p.parse_args()
    {
        "train": cmd_train,
        "diagnose": cmd_diagnose,
        "gradsnr": cmd_gradsnr,
        "equivalence": cmd_equivalence,
        "tables": cmd_tables,
    }[args.command](args)


if __name__ == "__main__":
    main()
