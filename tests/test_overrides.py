"""The overrides layers above params/: params.yaml (every key at null in git; DVC's default params
file, so `dvc exp run -S train.epochs=5` works) and `--set KEY=VALUE` on every stage command.

Both are validated like the files (an unknown key or a bad value is an error naming params.yaml or
--set and the key); null in params.yaml sets nothing; DVC's own `-S` rewrite of any params file
changes exactly the line of the value it sets (the files are written in the style it keeps).
"""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

import pytest
import yaml

from fian.config import ConfigError, RangeError, load_config, parse_set, read_overrides, unset_pruned
from fian_pipeline import registry as R
from fian_pipeline.render import load_plan, render_overrides

ROOT = Path(__file__).resolve().parents[1]
BASE, SYN = ROOT / "params/base.yaml", ROOT / "params/datasets/synthetic.yaml"


def test_set_values_are_typed_as_yaml_and_numbers() -> None:
    got = parse_set(["train.lr=1e-4", "train.epochs=5", "model.window_sizes=[8, 16]", "train.compile=true",
                     "model.stride_steps=null", "dataset.name='2024'", "eval.nms=fixed"])  # fmt: skip
    assert got == {
        "train": {"lr": 0.0001, "epochs": 5, "compile": True},
        "model": {"window_sizes": [8, 16], "stride_steps": None},
        "dataset": {"name": "2024"},  # quoted: stays a string
        "eval": {"nms": "fixed"},
    }
    assert isinstance(got["train"]["lr"], float) and isinstance(got["train"]["epochs"], int)
    for bad in ("train.lr", "=3", "train..lr=1", "train.lr=[1,"):
        with pytest.raises(ConfigError, match=r"--set"):
            parse_set([bad])


def test_set_wins_last_and_is_validated_like_a_file() -> None:
    cfg = load_config(BASE, SYN, extra=[("--set", parse_set(["train.epochs=3", "train.lr=1e-4"]))])
    assert (cfg.train.epochs, cfg.train.lr) == (3, 0.0001)  # synthetic.yaml says 30 and 1e-3
    with pytest.raises(ConfigError, match=r"^--set: train: unknown key\(s\) \['lrr'\]"):
        load_config(BASE, SYN, extra=[("--set", parse_set(["train.lrr=1"]))])
    with pytest.raises(ConfigError, match=r"^--set: train\.epochs: expected an integer, got 'many'"):
        load_config(BASE, SYN, extra=[("--set", parse_set(["train.epochs=many"]))])
    with pytest.raises(RangeError, match=r"train\.epochs = -1 \(in --set\): must be >= 0"):
        load_config(BASE, SYN, extra=[("--set", parse_set(["train.epochs=-1"]))])


def test_null_in_the_overrides_file_sets_nothing(tmp_path: Path) -> None:
    assert unset_pruned({"train": {"lr": None, "epochs": 5}, "model": {"hidden": None}, "x": {}}) == {
        "train": {"epochs": 5},
        "x": {},  # an empty mapping is a value
    }
    over = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", over)
    assert read_overrides(over) == {}  # the committed file sets nothing
    cfg = load_config(BASE, SYN, extra=[(str(over), read_overrides(over))])
    assert cfg == load_config(BASE, SYN)
    over.write_text(over.read_text().replace("\n  epochs:", "\n  epochs: 4", 1))
    assert load_config(BASE, SYN, extra=[(str(over), read_overrides(over))]).train.epochs == 4


def _project(tmp: Path) -> Path:
    shutil.copytree(ROOT / "workflow", tmp / "workflow")
    shutil.copytree(ROOT / "params", tmp / "params")
    shutil.copy(ROOT / "params.yaml", tmp / "params.yaml")
    return tmp


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (("\n  epochs:", "\n  epochs: -2"), r"train\.epochs = -2 \(in \S*params\.yaml\): must be >= 0"),
        (("\n  epochs:", "\n  epochs: many"), r"params\.yaml: train\.epochs: expected an integer, got 'many'"),
        (("\n  epochs:", "\n  epoch:"), r"params\.yaml: unknown key\(s\) \['train\.epoch'\].*"),
        (("\n  epochs:", "\n  lr_decay: 0.5\n  epochs:"), r"unknown key\(s\) \['train\.lr_decay'\]"),
        (("\ndataset:\n", "\ndataset:\n  name: tacos\n"), r"params\.yaml: dataset\.name: a dataset's identity"),
        (("\n  grad_clip:", "\n  # grad_clip:"), r"params\.yaml: key\(s\) \['train\.grad_clip'\] are missing"),
    ],
)  # fmt: skip
def test_a_bad_overrides_file_fails_at_plan_time_naming_it_and_the_key(
    tmp_path: Path, edit: tuple[str, str], needle: str
) -> None:
    proj = _project(tmp_path)
    over = proj / "params.yaml"
    text = over.read_text()
    assert edit[0] in text
    over.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(ConfigError, match=needle):
        load_plan("workflow/config/default.yaml", proj)


def test_the_stage_commands_read_params_yaml_and_the_workflow_values_follow_it(tmp_path: Path) -> None:
    """Snakemake's params of a job (what its params trigger compares) take params.yaml's set keys."""
    proj = _project(tmp_path)
    plan = load_plan("workflow/config/default.yaml", proj)
    train = next(i for i in R.instances(plan) if i.stage.name == "train")
    assert "--overrides params.yaml" in train.command(plan)
    before = R.param_values("train", train.wildcards, proj)
    over = proj / "params.yaml"
    over.write_text(over.read_text().replace("\n  epochs:", "\n  epochs: 4", 1))
    after = R.param_values("train", train.wildcards, proj)
    assert '"train.epochs": 30' in before and '"train.epochs": 4' in after
    prep = next(i for i in R.instances(plan) if i.stage.name == "prepare")
    assert R.param_values("prepare", prep.wildcards, proj) == R.param_values("prepare", prep.wildcards, ROOT)


def test_the_committed_overrides_file_lists_every_key_at_null() -> None:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert read_overrides(ROOT / "params.yaml") == {}, "params.yaml sets a key: `git checkout params.yaml`"
    flat: list[str] = []

    def walk(d: object, pre: str) -> None:
        if isinstance(d, dict) and d:
            for k, v in d.items():
                walk(v, f"{pre}.{k}" if pre else k)
        else:
            flat.append(pre)

    walk(data, "")
    assert sorted(flat) == sorted(R.override_keys())
    assert (ROOT / "params.yaml").read_text() == render_overrides(ROOT)


def _dvc_rewrite(path: Path, override: str) -> list[str]:
    """DVC's own `dvc exp run -S <file>:<override>` edit of ``path`` (dvc.utils.hydra.apply_overrides,
    what `dvc exp run` calls); returns the changed lines of a unified diff."""
    from dvc.utils.hydra import apply_overrides

    before = path.read_text()
    apply_overrides(str(path), [override])
    after = path.read_text()
    return [ln for ln in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
            if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]  # fmt: skip


def _a_key(data: dict, pre: str = "", scalar: bool = True) -> tuple[str, object] | None:
    """The first leaf holding a number, string or bool (``scalar``), else the first leaf at all."""
    for k, v in data.items():
        key = f"{pre}.{k}" if pre else k
        if isinstance(v, dict) and v:
            found = _a_key(v, key, scalar)
            if found:
                return found
        elif not scalar or isinstance(v, int | float | str | bool):
            return key, v
    return None


def _hydra(value: object) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def test_dvc_set_param_changes_one_line_of_any_params_file(tmp_path: Path) -> None:
    """`dvc exp run -S params/datasets/tacos.yaml:train.lr=...` rewrites the whole file (ruamel): the
    files are written in the style it keeps, so only the value's own line changes, comments kept."""
    files = [ROOT / "params.yaml", *sorted((ROOT / "params").rglob("*.yaml"))]
    checked = 0
    for src in files:
        path = tmp_path / src.name
        shutil.copy(src, path)
        data = yaml.safe_load(path.read_text()) or {}
        found = _a_key(data) or _a_key(data, scalar=False)
        if found is None:
            continue  # a file that sets nothing (params/variants/fian.yaml)
        key, value = found
        if isinstance(value, bool):
            new: object = not value
        elif isinstance(value, int | float | str):
            new = value + 1 if isinstance(value, int | float) else f"{value}x"
        else:  # a file of lists only (params/variants/qvma.yaml): the same value again changes nothing
            new = value
        changed = _dvc_rewrite(path, f"{key}={_hydra(new)}")
        if new == value:
            assert changed == [], (src, changed)
        else:
            assert len(changed) == 2 and changed[0].startswith("-") and changed[1].startswith("+"), (src, changed)
        assert yaml.safe_load(path.read_text()) == _set(data, key, new), src
        checked += 1
    # params.yaml: the usual experiment, a key at null set (what `dvc exp run -S train.epochs=5` does)
    path = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", path)
    changed = _dvc_rewrite(path, "train.epochs=5")
    assert len(changed) == 2 and changed[1].startswith("+  epochs: 5 ") and "# passes over" in changed[1], changed
    assert checked == len(files) - 1  # all but params/variants/fian.yaml (empty)


def _set(data: dict, key: str, value: object) -> dict:
    import copy

    out = copy.deepcopy(data)
    node = out
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    return out
