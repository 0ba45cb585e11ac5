"""Bubble classifiers: small plain CNNs on a 32x32 grayscale crop, sized for >= 20k crops/s/core.

Plain 3x3 convolutions + BatchNorm (folded away at export) + ReLU, with early downsampling: depthwise
convolutions save MACs on paper but run memory-bound in ONNX Runtime's CPU kernels at these sizes.
The head flattens the final 4x4 map instead of global pooling, because *where* the ink is matters
(a neighbour's mark at the crop edge is not a mark in this bubble).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ArchSpec:
    widths: tuple[int, int, int, int]
    input_size: int = 32


ARCHS: dict[str, ArchSpec] = {
    "tiny": ArchSpec((8, 16, 24, 32)),
    "small": ArchSpec((12, 16, 32, 48)),
    "base": ArchSpec((16, 32, 48, 64)),
}


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class BubbleNet(nn.Module):
    def __init__(self, num_classes: int, widths: tuple[int, int, int, int], input_size: int = 32) -> None:
        super().__init__()
        c1, c2, c3, c4 = widths
        self.input_size = input_size
        self.features = nn.Sequential(
            _block(1, c1, stride=2),  # [N,1,32,32] -> [N,c1,16,16]
            _block(c1, c2),  # -> [N,c2,16,16]
            nn.MaxPool2d(2),  # -> [N,c2,8,8]
            _block(c2, c3),  # -> [N,c3,8,8]
            nn.MaxPool2d(2),  # -> [N,c3,4,4]
            _block(c3, c4),  # -> [N,c4,4,4]
        )
        side = input_size // 8
        self.head = nn.Sequential(
            nn.Flatten(),  # -> [N, c4*4*4]
            nn.Dropout(0.1),
            nn.Linear(c4 * side * side, num_classes),  # -> [N, num_classes] logits
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [N,1,H,W] in [0,1] (pixel/255); centre it so BN/ReLU start in a sane range
        return self.head(self.features(x * 2.0 - 1.0))


class Ensemble(nn.Module):
    """Members trained apart (different seeds and renders), served as one graph.

    The output is the mean of the members' log-probabilities (a normalised geometric mean of their
    probabilities): softmax of it is the ensemble's posterior, so it stays a drop-in logits output.
    Averaging removes much of the seed-to-seed variance that a small net shows on real crops.
    """

    def __init__(self, members: list[BubbleNet]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.input_size = members[0].input_size

    def member_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [m(x) for m in self.members]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logp = [torch.log_softmax(z, dim=1) for z in self.member_logits(x)]
        return torch.stack(logp).mean(0)


Classifier = BubbleNet | Ensemble


def parse_arch(arch: str) -> tuple[str, int]:
    """'small' -> ('small', 1); 'small*3' -> ('small', 3): an ensemble of three."""
    name, _, n = arch.partition("*")
    if name not in ARCHS or (n and (not n.isdigit() or int(n) < 1)):
        raise ValueError(f"unknown arch {arch!r}: use one of {sorted(ARCHS)}, optionally '*N' for an ensemble")
    return name, int(n or 1)


def build_model(arch: str, num_classes: int) -> Classifier:
    name, n = parse_arch(arch)
    spec = ARCHS[name]
    if n == 1:
        return BubbleNet(num_classes, spec.widths, spec.input_size)
    return Ensemble([BubbleNet(num_classes, spec.widths, spec.input_size) for _ in range(n)])


def count_macs(model: nn.Module, input_size: int = 32) -> int:
    """Multiply-accumulates per crop (convolutions and linear layers), via forward hooks."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp: tuple[torch.Tensor], out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out.shape[1] * out.shape[2] * out.shape[3] * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, _inp: tuple[torch.Tensor], _out: torch.Tensor) -> None:
        nonlocal total
        total += m.in_features * m.out_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 1, input_size, input_size))
    model.train(was_training)
    for h in handles:
        h.remove()
    return total


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
