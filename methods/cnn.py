"""The CNN extension (paper §8): ResNet-18, CIFAR variant, followed by fully connected layers.

The backbone is built from torchvision's own `BasicBlock` in the CIFAR configuration (3x3
stride-1 first convolution, no max-pool, stages of 64/128/256/512 channels, global average
pooling: 512 features). The classifier is an MLP head of `depth` hidden layers of `width`
units (the paper's "2 fully connected layers" is depth = 1: one hidden layer and the output).

Where each method acts (paper §8): MC-APPROX approximates the convolutions only and keeps the
classifier exact; DROPOUT, ADAPTIVE-DROPOUT and ALSH-APPROX act on the fully connected
classifier only, with the backbone exact; STANDARD is exact everywhere. The backbone is
trained with the dense optimizer of the job (SGD in the paper, §9.4), the head with its
method's own optimizer (lazy for the sparse methods).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from methods.base import (
    Architecture,
    MethodModel,
    Optimizer,
    TrainSettings,
    make_dense_optimizer,
    optimizer_implementation,
)

FEATURES = 512  # ResNet-18's final channel count


class ResNet18Backbone(nn.Module):
    """ResNet-18 for small images, up to its pooled 512 features."""

    def __init__(self, in_channels: int, generator: torch.Generator):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
        )
        stages, channels = [], 64
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            downsample = None
            if stride != 1 or channels != width:
                downsample = nn.Sequential(
                    nn.Conv2d(channels, width, kernel_size=1, stride=stride, bias=False),
                    nn.BatchNorm2d(width),
                )
            stages.append(
                nn.Sequential(
                    BasicBlock(channels, width, stride, downsample), BasicBlock(width, width)
                )
            )
            channels = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        # torchvision's ResNet initialisation, drawn from the cell's generator.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(
                    module.weight, mode="fan_out", nonlinearity="relu", generator=generator
                )
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(self.stem(x))).flatten(1)  # (B, C, H, W) -> (B, 512)


# Examples per exact pass when batch norm is recalibrated: each pass contributes its batch
# statistics to a plain average (momentum None), as torch.optim.swa_utils.update_bn does.
CALIBRATION_BATCH = 256


@torch.no_grad()
def recalibrate_batch_norm(backbone: nn.Module, x: torch.Tensor) -> None:
    """Batch norm's running statistics recomputed from exact forward passes over `x` (every
    other module in evaluation mode: convolutions exact), then the modules' modes restored."""
    norms = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    modes = {m: m.training for m in backbone.modules()}
    momenta = {bn: bn.momentum for bn in norms}
    backbone.eval()
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over the passes
        bn.train()
    try:
        for start in range(0, len(x), CALIBRATION_BATCH):
            backbone(x[start : start + CALIBRATION_BATCH])
    finally:
        for bn in norms:
            bn.momentum = momenta[bn]
        for module, training in modes.items():
            module.training = training


class OptimizerPair:
    """The backbone's dense optimizer and the head's own, stepped together."""

    def __init__(self, backbone: Optimizer, head: Optimizer):
        self.backbone, self.head = backbone, head

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.backbone.zero_grad(set_to_none=set_to_none)
        self.head.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.backbone.step()
        self.head.step()

    def implementation(self) -> str:
        return "+".join(map(optimizer_implementation, (self.backbone, self.head)))

    def state_dict(self) -> dict[str, Any]:
        return {"backbone": self.backbone.state_dict(), "head": self.head.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.backbone.load_state_dict(state["backbone"])
        self.head.load_state_dict(state["head"])


class CNNModel(MethodModel):
    """Backbone features, then a method's MLP head; hooks delegate to the head."""

    def __init__(self, backbone: nn.Module, head: MethodModel, sampling_generator: torch.Generator):
        super().__init__(sampling_generator)
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.backbone(x))
        return out

    def make_optimizer(self, settings: TrainSettings) -> Optimizer:
        backbone = make_dense_optimizer(self.backbone.parameters(), settings)
        return OptimizerPair(backbone, self.head.make_optimizer(settings))

    def upkeep(self, step: int, examples_seen: int) -> None:
        self.head.upkeep(step, examples_seen)

    def calibrate(self, x: torch.Tensor) -> None:
        """When the backbone's convolutions sample their inputs while training (MC-APPROX's
        forward mode), batch norm's running statistics were learnt from sampled outputs (5-40x
        the exact variances in the last blocks) while evaluation runs exact convolutions:
        recompute them from exact passes over `x` first."""
        from methods.mc_approx_conv import MCConv2d

        if any(isinstance(m, MCConv2d) and m.mode == "forward" for m in self.backbone.modules()):
            recalibrate_batch_norm(self.backbone, x)

    def approx_log_probs(self, x: torch.Tensor) -> torch.Tensor | None:
        return self.head.approx_log_probs(self.backbone(x))

    def probe_stats(self, x: torch.Tensor, batch_size: int) -> dict[str, float]:
        return self.head.probe_stats(self.backbone(x), batch_size)

    def end_epoch(self) -> None:
        self.head.end_epoch()

    def epoch_stats(self) -> dict[str, float]:
        stats = self.head.epoch_stats()
        from methods.mc_approx_conv import conv_stats

        stats.update(conv_stats(self.backbone))
        return stats

    @torch.no_grad()
    def probe_error(self, x: torch.Tensor, batch_size: int) -> list[float]:
        """The head's probe on the backbone's (exact, evaluation-mode) features; for MC-APPROX
        sampling the convolutions' input channels (its head is exact), the error of the
        backbone's features themselves, as one value (`layer1`: the classifier's input)."""
        head = self.head.probe_error(self.backbone(x), batch_size)
        if head:
            return head
        from methods.mc_approx_conv import probe_backbone

        saved = self.random_state()
        try:
            return probe_backbone(self.backbone, x, batch_size)
        finally:
            self.set_random_state(saved)

    def random_state(self) -> dict[str, Any]:
        return {"own": super().random_state(), "head": self.head.random_state()}

    def set_random_state(self, state: dict[str, Any]) -> None:
        super().set_random_state(state.get("own", {}))
        self.head.set_random_state(state.get("head", {}))


def build(
    method: str,
    head_builder: Any,
    arch: Architecture,
    hyper: dict[str, Any],
    generator: torch.Generator,
    sampling_generator: torch.Generator,
) -> CNNModel:
    """The CNN for `method`; `head_builder` is the method module's MLP `build`."""
    assert arch.image_shape is not None
    backbone: nn.Module = ResNet18Backbone(arch.image_shape[0], generator)
    head_arch = Architecture(
        in_features=FEATURES, width=arch.width, depth=arch.depth, classes=arch.classes
    )
    if method == "mc_approx":
        from methods import mc_approx_conv, standard

        backbone = mc_approx_conv.approximate_convolutions(backbone, hyper, sampling_generator)
        head: MethodModel = standard.build(head_arch, {}, generator, sampling_generator)
    else:
        head = head_builder(head_arch, hyper, generator, sampling_generator)
    return CNNModel(backbone, head, sampling_generator)
