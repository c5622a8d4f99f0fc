"""Feature-pyramid backbones for single-channel (grey) images.

Every backbone returns an ``OrderedDict`` of five feature maps at strides 8, 16, 32,
64 and 128 pixels of the network input, with ``out_channels`` channels each, as
torchvision's FCOS expects.

- ``tiny``: four strided 3×3 conv stages (16-32-64-128 channels) and an FPN of 64
  channels; about 0.3 M parameters, trains on a 2-core CPU.
- ``resnet18_fpn``, ``resnet50_fpn``: torchvision's ResNets
  with an FPN of 256 channels (the GPU defaults). Grey input is repeated to three
  channels. Weights are never downloaded: they start random unless a local weights
  file is given to :func:`radlake.models.detector.build_detector`.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

#: Strides (pixels of the network input) of the five pyramid levels.
STRIDES = (8, 16, 32, 64, 128)
BACKBONES = ("tiny", "resnet18_fpn", "resnet50_fpn")


def _stage(c_in: int, c_out: int) -> nn.Sequential:
    """Halve the resolution: a strided 3×3 conv then a 3×3 conv, each with BatchNorm and ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class TinyFPN(nn.Module):
    """A small conv backbone with an FPN for grey images (strides 8-128, ``out_channels`` = 64)."""

    def __init__(self, out_channels: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(_stage(1, 16), _stage(16, 32))  # stride 4
        self.c3 = _stage(32, 64)  # stride 8
        self.c4 = _stage(64, 96)  # stride 16
        self.c5 = _stage(96, 128)  # stride 32
        self.fpn = FeaturePyramidNetwork(
            [64, 96, 128], out_channels, extra_blocks=LastLevelP6P7(out_channels, out_channels)
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        c3 = self.c3(self.stem(x[:, :1]))
        c4 = self.c4(c3)
        c5 = self.c5(c4)
        return self.fpn(OrderedDict([("p3", c3), ("p4", c4), ("p5", c5)]))


class _GreyToRGB(nn.Module):
    """Wrap a torchvision backbone so that it takes grey images (the channel is repeated)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.out_channels = body.out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.body(x[:, :1].expand(-1, 3, -1, -1))


def build_backbone(name: str) -> nn.Module:
    """The backbone called ``name`` (one of :data:`BACKBONES`), randomly initialised.

    Raises
    ------
    ValueError
        For an unknown name.
    """
    if name == "tiny":
        return TinyFPN()
    if name in ("resnet18_fpn", "resnet50_fpn"):
        from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

        body = resnet_fpn_backbone(
            backbone_name=name.removesuffix("_fpn"),
            weights=None,
            trainable_layers=5,
            returned_layers=[2, 3, 4],
            extra_blocks=LastLevelP6P7(256, 256),
        )
        return _GreyToRGB(body)
    raise ValueError(f"Unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
