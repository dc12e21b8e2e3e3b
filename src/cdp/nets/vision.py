"""Image encoders for policies that see cameras: a ResNet-18 with group norm (what Diffusion
Policy uses on robomimic images) and a small CNN for a CPU budget, plus the random / centre crop.

Written here rather than taken from torchvision: PyPI's torchvision does not import beside the
CPU build of torch 2.13 the project pins (its compiled operators need the matching torch), and a
ResNet-18 is a few lines of standard layers.

Images enter as ``[N, 3, H, W]`` floats in ``[-1, 1]``; encoders return ``[N, features]``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

ENCODERS = ("resnet18", "cnn")


def _gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(max(1, channels // 16), channels)  # Diffusion Policy: groups = channels / 16


class _Block(nn.Module):
    """ResNet basic block (two 3x3 convolutions and a skip), group norm in place of batch norm."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = _gn(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = _gn(cout)
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _gn(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(y)) + self.skip(x))


class ResNet18(nn.Module):
    """ResNet-18 (stem, four stages of two basic blocks, 64-512 channels), group norm, global
    average pooling and a linear map to ``features``."""

    def __init__(self, features: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), _gn(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        stages, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages += [_Block(cin, cout, stride), _Block(cout, cout, 1)]
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.out = nn.Linear(512, features)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.stages(self.stem(x)).mean((2, 3)))


class SmallCNN(nn.Module):
    """Four stride-2 3x3 convolutions (32-128 channels) with group norm, global average pooling
    and a linear map: ~0.2 M parameters against ResNet-18's 11 M."""

    def __init__(self, features: int = 64) -> None:
        super().__init__()
        layers, cin = [], 3
        for cout in (32, 64, 128, 128):
            layers += [nn.Conv2d(cin, cout, 3, 2, 1), _gn(cout), nn.ReLU()]
            cin = cout
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(128, features)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x).mean((2, 3)))


def make_image_encoder(name: str, features: int = 64) -> nn.Module:
    if name == "resnet18":
        return ResNet18(features)
    if name == "cnn":
        return SmallCNN(features)
    raise ValueError(f"unknown image encoder {name!r}; choose from {ENCODERS}")


def crop(images: Tensor, size: int, generator: torch.Generator | None = None, random: bool = True) -> Tensor:
    """``[N, C, H, W] -> [N, C, size, size]``: an independent random window per image (training
    augmentation) or the centre window (inference)."""
    n, _, h, w = images.shape
    if size > min(h, w):
        raise ValueError(f"crop {size} is larger than the {h}x{w} images")
    if not random:
        top, left = (h - size) // 2, (w - size) // 2
        return images[:, :, top:top + size, left:left + size]
    top = torch.randint(0, h - size + 1, (n,), device=images.device, generator=generator)
    left = torch.randint(0, w - size + 1, (n,), device=images.device, generator=generator)
    rows = (top[:, None] + torch.arange(size, device=images.device))[:, None, :, None]  # [N, 1, size, 1]
    cols = (left[:, None] + torch.arange(size, device=images.device))[:, None, None, :]  # [N, 1, 1, size]
    return images[torch.arange(n, device=images.device)[:, None, None, None],
                  torch.arange(images.shape[1], device=images.device)[None, :, None, None], rows, cols]
