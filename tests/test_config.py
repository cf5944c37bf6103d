"""The layered params load into typed, frozen configs; bad params fail with the file and the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fian.config import Config, ConfigError, load_config, load_params, params_files, stride_for

PARAMS = Path(__file__).resolve().parents[1] / "params"
DATASETS = sorted(p.stem for p in (PARAMS / "datasets").glob("*.yaml"))
VARIANTS = sorted(p.stem for p in (PARAMS / "variants").glob("*.yaml"))


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_layer_combination_loads(dataset: str, variant: str) -> None:
    cfg = load_params(PARAMS, dataset, variant)
    assert isinstance(cfg, Config)
    assert cfg.variant == variant
    assert max(cfg.model.window_sizes) <= cfg.features.num_steps


def test_section_4_3_values() -> None:
    anet = load_params(PARAMS, "activitynet", "fian")
    tacos = load_params(PARAMS, "tacos", "fian")
    cha = load_params(PARAMS, "charades", "fian")
    assert (anet.features.num_steps, tacos.features.num_steps, cha.features.num_steps) == (200, 200, 64)
    assert anet.model.window_sizes == (16, 32, 64, 96, 128, 160, 192)
    assert tacos.model.window_sizes == (8, 16, 32, 64)
    assert cha.model.window_sizes == (16, 24, 32, 40)
    assert (anet.model.stride_ratio, tacos.model.stride_ratio, cha.model.stride_ratio) == (0.25, 0.125, 0.125)
    assert (anet.loss.alpha, tacos.loss.alpha, cha.loss.alpha) == (0.001, 0.005, 0.005)
    assert (anet.model.heads, tacos.model.heads, cha.model.heads) == (8, 8, 4)
    assert (anet.train.lr, tacos.train.lr, cha.train.lr) == (8e-4, 4e-4, 4e-4)
    assert (anet.train.batch_size, tacos.train.batch_size, cha.train.batch_size) == (128, 64, 64)
    assert {anet.loss.tau, tacos.loss.tau, cha.loss.tau} == {0.55}
    assert anet.model.hidden == 512


def test_variants_are_configuration_of_one_model() -> None:
    soft = load_params(PARAMS, "tacos", "soft").model
    assert (soft.attention, soft.branches, soft.iterate, soft.fusion) == ("soft", ("vq",), False, "none")
    assert load_params(PARAMS, "tacos", "qvma").model.branches == ("qv",)
    assert load_params(PARAMS, "tacos", "matrix").model.fusion == "matrix"
    assert load_params(PARAMS, "tacos", "stride1").model.stride_steps == 1


def test_config_is_frozen() -> None:
    cfg = load_params(PARAMS, "tacos", "fian")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.hidden = 3  # type: ignore[misc]
    assert isinstance(cfg.model.window_sizes, tuple)


def test_stride_for() -> None:
    assert [stride_for(k, 0.125, None) for k in (8, 16, 32, 64)] == [1, 2, 4, 8]
    assert stride_for(16, 0.25, None) == 4
    assert stride_for(64, 0.125, 1) == 1


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    bad = _write(tmp_path, "v.yaml", "model:\n  hiden: 3\n")
    with pytest.raises(ConfigError, match=r"v\.yaml.*model.*hiden"):
        load_config(PARAMS / "base.yaml", bad)


def test_wrong_type_names_key(tmp_path: Path) -> None:
    bad = _write(tmp_path, "v.yaml", "train:\n  batch_size: many\n")
    with pytest.raises(ConfigError, match=r"v\.yaml.*train\.batch_size"):
        load_config(PARAMS / "base.yaml", bad)


def test_bad_literal(tmp_path: Path) -> None:
    bad = _write(tmp_path, "v.yaml", "model:\n  attention: hard\n")
    with pytest.raises(ConfigError, match="attention.*not one of"):
        load_config(PARAMS / "base.yaml", bad)


def test_out_of_range(tmp_path: Path) -> None:
    bad = _write(tmp_path, "v.yaml", "model:\n  heads: 7\n")
    with pytest.raises(ConfigError, match="divisible"):
        load_config(PARAMS / "base.yaml", bad)
    bad = _write(tmp_path, "w.yaml", "loss:\n  tau: 1.5\n")
    with pytest.raises(ConfigError, match="tau"):
        load_config(PARAMS / "base.yaml", bad)
    bad = _write(tmp_path, "x.yaml", "model:\n  window_sizes: [8, 400]\n")
    with pytest.raises(ConfigError, match="num_steps"):
        load_config(PARAMS / "base.yaml", bad)


def test_predict_limits_are_checked(tmp_path: Path) -> None:
    """Issue 18: the limits of predict / the served model are typed, range-checked params keys."""
    cfg = load_config(PARAMS / "base.yaml")
    assert (cfg.predict.max_top, cfg.predict.path_root) == (100, None)
    for text, match in (("max_top: 0", r"predict\.max_top: must be >= 1"), ("max_rows: many", r"predict\.max_rows"),
                        ("max_video_seconds: .nan", r"predict\.max_video_seconds: expected a finite number"),
                        ("max_video_seconds: 0", r"predict\.max_video_seconds: must be > 0"),
                        ("path_root: ''", r"predict\.path_root"), ("max_tops: 3", "unknown key")):  # fmt: skip
        bad = _write(tmp_path, "v.yaml", f"predict:\n  {text}\n")
        with pytest.raises(ConfigError, match=match):
            load_config(PARAMS / "base.yaml", bad)


def test_inconsistent_ablation_is_rejected(tmp_path: Path) -> None:
    bad = _write(tmp_path, "v.yaml", "model:\n  branches: [vq]\n  fusion: matrix\n")
    with pytest.raises(ConfigError, match="needs both branches"):
        load_config(PARAMS / "base.yaml", bad)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = _write(tmp_path, "broken.yaml", "model: [\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml.*YAML"):
        load_config(bad)
    bad = _write(tmp_path, "list.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_params_files_order() -> None:
    files = params_files(PARAMS, "tacos", "fian")
    assert [f.relative_to(PARAMS).as_posix() for f in files] == ["base.yaml", "datasets/tacos.yaml", "variants/fian.yaml"]


def test_every_key_is_commented() -> None:
    """Each key line of every params file carries a comment (its meaning and source)."""
    missing = []
    for f in sorted(PARAMS.rglob("*.yaml")):
        list_indent = -1  # fields of a list item (e.g. a download source) share the item's comment
        for i, line in enumerate(f.read_text().splitlines(), 1):
            s = line.strip()
            indent = len(line) - len(line.lstrip())
            if s.startswith("- "):
                list_indent = indent
                continue
            if list_indent >= 0 and indent > list_indent:
                continue
            list_indent = -1
            if not s or s.startswith("#") or s in ("{}",):
                continue
            if ":" in s and not s.endswith(":") and "#" not in s:
                missing.append(f"{f.relative_to(PARAMS)}:{i}: {s}")
    assert not missing, "params keys without a comment:\n" + "\n".join(missing)


def test_eval_protocol_keys(tmp_path: Path) -> None:
    """eval.iou_rule / eval.nms: the paper tables' defaults, typed choices, and the per-level range."""
    base = load_config(PARAMS / "base.yaml")
    assert (base.eval.iou_rule, base.eval.nms) == ("gt", "per_level")  # S4.2 "larger than m"; TALL's NMS
    ge = load_config(PARAMS / "base.yaml", _write(tmp_path, "ge.yaml", "eval:\n  iou_rule: ge\n  nms: fixed\n"))
    assert (ge.eval.iou_rule, ge.eval.nms) == ("ge", "fixed")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*eval\.iou_rule.*'>=' is not one of \['gt', 'ge'\]"):
        load_config(PARAMS / "base.yaml", _write(tmp_path, "bad.yaml", "eval:\n  iou_rule: '>='\n"))
    with pytest.raises(ConfigError, match=r"eval\.nms.*not one of \['fixed', 'per_level'\]"):
        load_config(PARAMS / "base.yaml", _write(tmp_path, "bad2.yaml", "eval:\n  nms: cmin\n"))
    low = _write(tmp_path, "low.yaml", "eval:\n  iou_thresholds: [0.01, 0.5]\n")
    with pytest.raises(ConfigError, match=r"eval\.nms = 'per_level' \(in .*base\.yaml\), eval\.iou_thresholds = \[0\.01, 0\.5\] \(in .*low\.yaml\): per_level suppresses at m - 0\.05"):
        load_config(PARAMS / "base.yaml", low)
    fixed_low = _write(tmp_path, "fixed_low.yaml", "eval:\n  iou_thresholds: [0.01, 0.5]\n  nms: fixed\n")
    assert load_config(PARAMS / "base.yaml", fixed_low).eval.iou_thresholds == (0.01, 0.5)
