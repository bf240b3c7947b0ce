"""ResNet-50 feature trunk (no classifier) in the two layouts FID weights come in.

* ``"torchvision"``: ResNet-50 v1.5 as torchvision builds it — convolutions without bias, the stride of a
  downsampling bottleneck on its 3x3 convolution, BatchNorm eps 1e-5.
* ``"radimagenet"``: the Keras RadImageNet ResNet-50 ported to PyTorch (the weights the MAISI FID script loads) —
  convolutions with bias, the stride on the first 1x1 convolution (ResNet v1), BatchNorm eps 1.001e-5.

Parameter names are torchvision's in both (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``...), so
state dicts of either source load strictly. The output is the global average of the last stage: (N, 2048).
"""

from __future__ import annotations

import torch
from torch import nn

LAYOUTS = {
    "torchvision": {"bias": False, "stride_on": "conv2", "eps": 1e-5},
    "radimagenet": {"bias": True, "stride_on": "conv1", "eps": 1.001e-5},
}
STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (width, blocks, stride)
EXPANSION = 4


class Bottleneck(nn.Module):
    def __init__(self, c_in: int, width: int, *, stride: int, bias: bool, stride_on: str, eps: float) -> None:
        super().__init__()
        c_out = width * EXPANSION
        s1, s2 = (stride, 1) if stride_on == "conv1" else (1, stride)
        self.conv1 = nn.Conv2d(c_in, width, 1, stride=s1, bias=bias)
        self.bn1 = nn.BatchNorm2d(width, eps=eps)
        self.conv2 = nn.Conv2d(width, width, 3, stride=s2, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(width, eps=eps)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=bias)
        self.bn3 = nn.BatchNorm2d(c_out, eps=eps)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=bias), nn.BatchNorm2d(c_out, eps=eps)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet50Trunk(nn.Module):
    """ResNet-50 without the classifier; ``forward`` maps (N, 3, H, W) to pooled (N, 2048) features.

    Args:
        layout: ``"torchvision"`` or ``"radimagenet"`` (see the module docstring).
    """

    def __init__(self, *, layout: str = "torchvision") -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
        opts = LAYOUTS[layout]
        self.layout = layout
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=opts["bias"])
        self.bn1 = nn.BatchNorm2d(64, eps=opts["eps"])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        c_in = 64
        for i, (width, blocks, stride) in enumerate(STAGES, start=1):
            layers = []
            for b in range(blocks):
                layers.append(Bottleneck(c_in, width, stride=stride if b == 0 else 1, **opts))
                c_in = width * EXPANSION
            setattr(self, f"layer{i}", nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3))
