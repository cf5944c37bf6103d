"""C3D (Sports-1M): the converted checkpoint's names and shapes load strictly; fc6/fc7 on one
full-size clip; input normalisation; weights are never silently random."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fian.extract.c3d import C3D, SPORTS1M_MEAN_RGB, normalize
from fian.extract.extractor import build_backbone, load_state_strict, load_weights

# The parameters of c3d.pickle (DavideA/c3d-pytorch's conversion of the Caffe Sports-1M model)
C3D_PICKLE_SHAPES = {
    "conv1": (64, 3, 3, 3, 3),
    "conv2": (128, 64, 3, 3, 3),
    "conv3a": (256, 128, 3, 3, 3),
    "conv3b": (256, 256, 3, 3, 3),
    "conv4a": (512, 256, 3, 3, 3),
    "conv4b": (512, 512, 3, 3, 3),
    "conv5a": (512, 512, 3, 3, 3),
    "conv5b": (512, 512, 3, 3, 3),
    "fc6": (4096, 8192),
    "fc7": (4096, 4096),
    "fc8": (487, 4096),
}


def standard_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for name, shape in C3D_PICKLE_SHAPES.items():
        fan_in = int(torch.tensor(shape[1:]).prod())
        sd[f"{name}.weight"] = torch.randn(shape, generator=g) / fan_in**0.5
        sd[f"{name}.bias"] = torch.randn(shape[0], generator=g) * 0.01
    return sd


@pytest.fixture(scope="module")
def standard() -> dict[str, torch.Tensor]:
    return standard_state_dict()


@pytest.fixture(scope="module")
def net() -> C3D:
    return C3D()


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory, standard: dict[str, torch.Tensor]) -> Path:
    path = tmp_path_factory.mktemp("w") / "c3d.pickle"
    torch.save(standard, path)
    return path


def test_standard_names_and_shapes_load_strictly(net: C3D, weights_file: Path, standard) -> None:
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == {
        f"{n}.{p}": (s if p == "weight" else (s[0],))
        for n, s in C3D_PICKLE_SHAPES.items()
        for p in ("weight", "bias")
    }
    load_weights(net, weights_file, "c3d.pickle")
    torch.testing.assert_close(net.fc6.weight, standard["fc6.weight"])


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda sd: sd.pop("conv3b.bias"), r"1 missing key\(s\) \['conv3b\.bias'\]"),
        (
            lambda sd: sd.update({"module.extra": torch.zeros(1)}),
            r"1 unexpected key\(s\) \['module\.extra'\]",
        ),
        (
            lambda sd: sd.update({"fc8.weight": torch.zeros(101, 4096)}),
            r"fc8\.weight: file \(101, 4096\) != model \(487, 4096\)",
        ),
        (lambda sd: sd.clear() or sd.update({"w": [1, 2]}), r"expected a state dict"),
    ],
)
def test_mismatching_checkpoint_is_an_error_naming_the_file(net: C3D, standard, edit, match: str) -> None:
    sd = dict(standard)  # shallow: the tensors are shared, never modified
    edit(sd)
    with pytest.raises(ValueError, match=rf"^bad\.pickle: .*{match}"):
        load_state_strict(net, sd, where="bad.pickle")


def test_unreadable_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "c3d.pickle"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="c3d.pickle: not a readable PyTorch state dict"):
        load_weights(C3D(), path, "c3d.pickle")


@torch.inference_mode()
def test_one_full_size_clip_fc6_fc7(weights_file: Path) -> None:
    """16 x 112 x 112 -> pool5 [512, 1, 4, 4] = 8192 = fc6's input; fc6/fc7 post-ReLU 4096-d."""
    bb = build_backbone("c3d", weights_file, layer="fc7")
    assert bb.feature_dim == 4096 and not bb.random_weights and bb.weights == "c3d.pickle"
    clip = torch.randint(
        0, 256, (1, 16, 112, 112, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    x = bb.net.normalize(clip)  # [1, 3, 16, 112, 112]
    assert bb.net.pool5(x).shape == (1, 512, 1, 4, 4)
    out = bb.net(x)
    assert out["fc6"].shape == out["fc7"].shape == (1, 4096) and out["logits"].shape == (1, 487)
    assert (out["fc6"] >= 0).all() and (out["fc7"] >= 0).all() and out["fc7"].abs().sum() > 0
    torch.testing.assert_close(bb.net.extract(clip), out["fc7"])
    bb.net.layer = "fc6"
    torch.testing.assert_close(bb.net.extract(clip), out["fc6"])


def test_normalisation_mean_and_channel_order() -> None:
    clips = torch.zeros(1, 2, 2, 2, 3, dtype=torch.uint8)  # [B, T, H, W, 3] RGB
    clips[..., 0], clips[..., 1], clips[..., 2] = 200, 100, 50
    r, g, b = SPORTS1M_MEAN_RGB
    mean = torch.tensor(SPORTS1M_MEAN_RGB).view(1, 3, 1, 1, 1)
    bgr = normalize(clips, mean, bgr=True)  # [1, 3, 2, 2, 2]
    assert bgr.shape == (1, 3, 2, 2, 2)
    torch.testing.assert_close(bgr[0, :, 0, 0, 0], torch.tensor([50 - b, 100 - g, 200 - r]))
    rgb = normalize(clips, torch.zeros(1, 3, 1, 1, 1), bgr=False)
    torch.testing.assert_close(rgb[0, :, 1, 1, 1], torch.tensor([200.0, 100.0, 50.0]))
    with pytest.raises(ValueError, match="layer"):
        C3D(layer="pool5")


def test_no_weights_is_an_error_that_names_the_sources() -> None:
    with pytest.raises(ValueError, match=r"c3d\.pickle.*imagelab\.ing\.unimore\.it.*allow_random_weights"):
        build_backbone("c3d", None)
    with pytest.raises(FileNotFoundError, match=r"missing\.pickle: weights file not found.*c3d\.pickle"):
        build_backbone("c3d", "missing.pickle")


def test_random_weights_only_when_allowed_and_reproducible() -> None:
    a = build_backbone("c3d", None, allow_random_weights=True, seed=3)
    b = build_backbone("c3d", None, allow_random_weights=True, seed=3)
    assert a.random_weights and a.weights == "random"
    torch.testing.assert_close(a.net.conv1.weight, b.net.conv1.weight)
