"""C3D (Tran et al., ICCV 2015), the Sports-1M network, as a feature extractor.

Parameter names and shapes are those of the community's PyTorch conversion of the Caffe
Sports-1M model (``c3d.pickle`` of DavideA/c3d-pytorch): ``conv1`` [64,3,3,3,3], ``conv2``,
``conv3a/b``, ``conv4a/b``, ``conv5a/b``, ``fc6`` [4096, 8192], ``fc7`` [4096, 4096],
``fc8`` [487, 4096] (weights and biases).  Input: 16-frame clips of 112x112.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Sports-1M mean per channel (the mean cube of the C3D release averaged over time and space), R, G, B
SPORTS1M_MEAN_RGB = (101.41, 97.66, 90.25)

CLIP_LEN = 16
CROP = 112
RESIZE = (128, 171)  # (height, width) before the center crop, as in the C3D release


def normalize(clips: torch.Tensor, mean_rgb: torch.Tensor, bgr: bool) -> torch.Tensor:
    """clips [B, T, H, W, 3] uint8 RGB -> [B, 3, T, H, W] float minus ``mean_rgb`` [1, 3, 1, 1, 1]."""
    x = clips.permute(0, 4, 1, 2, 3).float() - mean_rgb.to(clips.device)  # [B, 3, T, H, W]
    return x.flip(1) if bgr else x


class C3D(nn.Module):
    """conv1 .. conv5b, fc6, fc7, fc8; ``extract`` returns the post-ReLU fc6 or fc7 activations.

    ``mean_rgb`` and ``bgr`` describe the input normalisation (not parameters: the state dict
    holds exactly the converted checkpoint's names).
    """

    feature_dims = {"fc6": 4096, "fc7": 4096}

    def __init__(
        self,
        num_classes: int = 487,
        layer: str = "fc7",
        mean_rgb: Sequence[float] = SPORTS1M_MEAN_RGB,
        bgr: bool = True,
    ) -> None:
        super().__init__()
        if layer not in self.feature_dims:
            raise ValueError(f"C3D layer must be one of {sorted(self.feature_dims)}, got {layer!r}")
        self.layer = layer
        self.feature_dim = self.feature_dims[layer]
        self.bgr = bgr
        self.register_buffer(
            "mean", torch.tensor(list(mean_rgb), dtype=torch.float32).view(1, 3, 1, 1, 1), persistent=False
        )

        def conv(cin: int, cout: int) -> nn.Conv3d:
            return nn.Conv3d(cin, cout, kernel_size=3, padding=1)

        self.conv1, self.conv2 = conv(3, 64), conv(64, 128)
        self.conv3a, self.conv3b = conv(128, 256), conv(256, 256)
        self.conv4a, self.conv4b = conv(256, 512), conv(512, 512)
        self.conv5a, self.conv5b = conv(512, 512), conv(512, 512)
        self.fc6 = nn.Linear(8192, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, num_classes)

    def normalize(self, clips: torch.Tensor) -> torch.Tensor:
        """clips [B, T, H, W, 3] uint8 RGB -> [B, 3, T, H, W] float, mean-subtracted, BGR if asked."""
        return normalize(clips, self.mean, self.bgr)

    def pool5(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, 16, 112, 112] normalised -> [B, 512, 1, 4, 4]."""
        x = F.max_pool3d(F.relu(self.conv1(x)), (1, 2, 2), (1, 2, 2))  # [B, 64, 16, 56, 56]
        x = F.max_pool3d(F.relu(self.conv2(x)), 2, 2)  # [B, 128, 8, 28, 28]
        x = F.max_pool3d(F.relu(self.conv3b(F.relu(self.conv3a(x)))), 2, 2)  # [B, 256, 4, 14, 14]
        x = F.max_pool3d(F.relu(self.conv4b(F.relu(self.conv4a(x)))), 2, 2)  # [B, 512, 2, 7, 7]
        x = F.relu(self.conv5b(F.relu(self.conv5a(x))))  # [B, 512, 2, 7, 7]
        return F.max_pool3d(x, 2, 2, padding=(0, 1, 1))  # [B, 512, 1, 4, 4]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x [B, 3, 16, 112, 112] normalised -> fc6, fc7 (post-ReLU, [B, 4096]) and logits [B, 487].

        Inference only: dropout (p=0.5 in training) is the identity here.
        """
        fc6 = F.relu(self.fc6(self.pool5(x).flatten(1)))  # [B, 4096]
        fc7 = F.relu(self.fc7(fc6))  # [B, 4096]
        return {"fc6": fc6, "fc7": fc7, "logits": self.fc8(fc7)}

    def extract(self, clips: torch.Tensor) -> torch.Tensor:
        """clips [B, 16, 112, 112, 3] uint8 RGB -> features [B, 4096] of ``self.layer``."""
        x = self.normalize(clips)
        fc6 = F.relu(self.fc6(self.pool5(x).flatten(1)))  # [B, 4096]
        return fc6 if self.layer == "fc6" else F.relu(self.fc7(fc6))
