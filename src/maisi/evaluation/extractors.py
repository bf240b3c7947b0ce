"""2D feature extractors for FID: a ResNet-50 with local weights, and a weights-free fallback.

An extractor maps a batch of single-channel slices ``(N, 1, H, W)`` with values in [0, 1] to features ``(N, F)``
and has an ``ident`` string that names it (and its weights) in feature caches.

* :class:`ResNet50Features` — ResNet-50 (:mod:`maisi.evaluation.resnet`, torchvision's parameter names; torchvision
  itself is not needed) with weights read from a LOCAL file: ImageNet weights saved from torchvision
  (``preprocess="imagenet"``: v1.5 layout, per-channel mean/std) or the RadImageNet ResNet-50 port the MAISI FID
  script loads (``preprocess="radimagenet"``: Keras v1 layout, channels reversed to BGR, per-channel mean subtracted,
  no scaling). Features are the 2048 global-average-pooled activations of the last stage. This is the extractor to
  report FIDs with.
* :class:`RandomConvFeatures` — the documented weights-free fallback: a fixed 3-stage conv net (3x3 conv, ReLU,
  2x2 average pooling) whose weights are drawn from ``torch.Generator().manual_seed(seed)``; the features are the
  spatial mean and standard deviation of every channel of every stage (``2 * sum(channels)`` values). It is
  deterministic and sensitive to intensity, contrast and texture, so FID of a set against itself is 0 and grows with
  any distribution shift, but its values are NOT comparable to published (ImageNet/RadImageNet) FIDs. Use it for
  tests, smoke runs and for comparing models with each other on one machine.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from maisi.errors import CheckpointError, ConfigError
from maisi.io import sha256_file

EXTRACTORS = ("random", "resnet50", "radimagenet")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: RadImageNet mean in BGR channel order (subtracted after RGB -> BGR).
RADIMAGENET_MEAN_BGR = (0.406, 0.456, 0.485)
_STRIP_PREFIXES = ("module.", "model.", "backbone.", "encoder.", "net.")


class RandomConvFeatures(nn.Module):
    """Weights-free deterministic conv features (see the module docstring).

    Args:
        seed: seed of the weight generator; the same seed gives the same network on every machine.
        channels: output channels of the three conv stages.
    """

    def __init__(self, *, seed: int = 0, channels: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(int(seed))
        self.seed = int(seed)
        self.channels = tuple(int(c) for c in channels)
        convs = []
        c_in = 1
        for c_out in self.channels:
            conv = nn.Conv2d(c_in, c_out, 3, padding=1)
            fan_in = c_in * 9
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                # biases spread the ReLU thresholds over the [0, 1] intensity range, so intensity shifts show up
                conv.bias.copy_(torch.rand(c_out, generator=gen) - 0.5)
            convs.append(conv)
            c_in = c_out
        self.convs = nn.ModuleList(convs)
        self.requires_grad_(False)
        self.eval()

    @property
    def ident(self) -> str:
        return f"random-conv-s{self.seed}-c{'x'.join(map(str, self.channels))}"

    @property
    def feature_dim(self) -> int:
        return 2 * sum(self.channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) in [0, 1] -> (N, 2 * sum(channels)) float32."""
        feats = []
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            feats += [x.mean(dim=(2, 3)), x.std(dim=(2, 3), unbiased=False)]
            if i < len(self.convs) - 1 and min(x.shape[2:]) >= 2:
                x = F.avg_pool2d(x, 2)
        return torch.cat(feats, dim=1)


def resnet50_backbone(layout: str = "torchvision") -> nn.Module:
    """ResNet-50 trunk in ``layout`` (``torchvision`` or ``radimagenet``, see :mod:`maisi.evaluation.resnet`);
    output (N, 2048)."""
    from maisi.evaluation.resnet import ResNet50Trunk

    return ResNet50Trunk(layout=layout)


class ResNet50Features(nn.Module):
    """ResNet-50 pooled features with weights from a local file.

    Args:
        weights: ``.pt``/``.pth`` state dict (read without unpickling code) or ``.safetensors`` file; keys may carry
            a ``module.``/``model.``/``backbone.`` prefix; classifier (``fc.*``) keys are ignored.
        preprocess: ``"imagenet"`` or ``"radimagenet"`` (see the module docstring).

    Raises:
        CheckpointError: naming the file when it is missing or its keys do not fit ResNet-50.
    """

    def __init__(self, *, weights: str | os.PathLike, preprocess: str = "radimagenet") -> None:
        super().__init__()
        if preprocess not in ("imagenet", "radimagenet"):
            raise ConfigError(f"preprocess must be 'imagenet' or 'radimagenet', got {preprocess!r}")
        self.preprocess = preprocess
        self.weights = Path(weights)
        self.net = resnet50_backbone("radimagenet" if preprocess == "radimagenet" else "torchvision")
        state = _read_state(self.weights)
        from maisi.networks.checkpoint import load_state_strict

        # BatchNorm step counters are not used in eval mode; files saved without them are fine
        counters = [k for k in self.net.state_dict() if k.endswith("num_batches_tracked")]
        load_state_strict(self.net, state, source=str(self.weights), allowed_missing=counters)
        self.requires_grad_(False)
        self.eval()
        self._digest = sha256_file(self.weights)[:12]

    @property
    def ident(self) -> str:
        return f"resnet50-{self.preprocess}-{self._digest}"

    @property
    def feature_dim(self) -> int:
        return 2048

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) in [0, 1] -> (N, 2048)."""
        x = x.expand(-1, 3, -1, -1)
        if self.preprocess == "imagenet":
            mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
            x = (x - mean) / std
        else:
            x = x.flip(1) - torch.tensor(RADIMAGENET_MEAN_BGR, device=x.device).view(1, 3, 1, 1)
        return self.net(x)


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: feature-extractor weights not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        from maisi.io import read_torch_file
        from maisi.networks.official import split_state

        state, _ = split_state(read_torch_file(path), source=str(path))
    out = {}
    for key, value in state.items():
        for prefix in _STRIP_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        if key.startswith("fc."):
            continue
        out[key] = value.float() if value.is_floating_point() else value
    return out


def load_extractor(
    name: str = "random", *, weights: str | os.PathLike | None = None, seed: int = 0, device: str = "cpu"
) -> nn.Module:
    """Build an extractor by name: ``random`` (weights-free), ``resnet50`` (ImageNet preprocessing) or
    ``radimagenet`` (RadImageNet preprocessing); the last two need ``weights``.

    Raises:
        ConfigError: for an unknown name or missing weights.
    """
    if name not in EXTRACTORS:
        raise ConfigError(f"unknown feature extractor {name!r}; expected one of {list(EXTRACTORS)}")
    if name == "random":
        return RandomConvFeatures(seed=seed).to(device)
    if weights is None:
        raise ConfigError(
            f"feature extractor {name!r} needs --extractor-weights (a local ResNet-50 weights file)"
        )
    preprocess = "imagenet" if name == "resnet50" else "radimagenet"
    return ResNet50Features(weights=weights, preprocess=preprocess).to(device)
