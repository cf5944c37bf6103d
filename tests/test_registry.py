"""The stage registry: one DAG, consistent paths, stage CLIs that accept the registry's commands,
and clear errors for bad workflow configs."""

from __future__ import annotations

import contextlib
import importlib
import io
import shutil
from pathlib import Path

import pytest
import yaml

from fian.config import ConfigError
from fian_pipeline import registry as R
from fian_pipeline.common import StageError
from fian_pipeline.render import load_plan

ROOT = Path(__file__).resolve().parents[1]
PAPER = "workflow/config/paper.yaml"
DEFAULT = "workflow/config/default.yaml"


@pytest.fixture(scope="module")
def paper_plan() -> R.Plan:
    return load_plan(PAPER, ROOT)


@pytest.fixture(scope="module")
def demo_plan() -> R.Plan:
    return load_plan(DEFAULT, ROOT)


def _help(module: str) -> str:
    """The stage's own argparse --help, run in-process (stage modules import heavy things lazily)."""
    mod = importlib.import_module(f"fian_pipeline.{module}")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as exit_:
        mod.main(["--help"])
    assert exit_.value.code == 0
    return buf.getvalue()


@pytest.mark.parametrize("stage", R.STAGES, ids=lambda s: s.name)
def test_stage_cli_accepts_registry_flags(stage: R.Stage) -> None:
    """Every flag the registry puts on a command line exists in that stage's parser."""
    if importlib.util.find_spec(f"fian_pipeline.{stage.module}") is None:
        pytest.skip(f"pipeline/{stage.module}.py not written yet")
    text = _help(stage.module)
    flags = [a.flag for a in stage.args] + [f for f in stage.fixed if f.startswith("--")]
    if stage.layers:
        flags.append("--params")
    for flag in flags:
        assert flag in text, f"fian_pipeline.{stage.module} has no {flag} (registry stage {stage.name})"


def test_paths_are_unique_and_every_input_has_a_producer(paper_plan: R.Plan, demo_plan: R.Plan) -> None:
    for plan in (paper_plan, demo_plan):
        insts = R.instances(plan)
        producer: dict[str, str] = {}
        for inst in insts:
            for out in inst.outs():
                assert out not in producer, f"{out} produced by {producer[out]} and {inst.id}"
                producer[out] = inst.id
        for inst in insts:
            for dep in inst.deps(plan):
                if dep.startswith("params/"):
                    assert (ROOT / dep).exists(), dep
                    continue
                # a dependency is another job's output, or (the store's inputs) under it
                assert any(dep == o or dep.startswith(o + "/") for o in producer), (
                    f"{inst.id}: nothing makes {dep}"
                )


def test_paths_follow_the_architecture(paper_plan: R.Plan) -> None:
    raw = yaml.safe_load((ROOT / PAPER).read_text())
    assert raw.pop("seeds") == [0, 1, 2]  # the paper's config: three seeds (issue 16)
    seeded = {i.id: i for i in R.instances(paper_plan)}
    assert seeded["train_seed@tacos-soft-2"].outs()[0] == "results/tacos/soft/seed2/checkpoint.pt"
    assert seeded["evaluate_seed@tacos-soft-2-test"].outs()[1] == "results/tacos/soft/seed2/metrics_test.json"
    assert seeded["aggregate@tacos-soft-test"].outs() == ["results/tacos/soft/summary_test.json"]
    assert seeded["compare@tacos-soft-test"].outs() == ["results/tacos/soft/compare_fian_test.json"]
    by_id = {i.id: i for i in R.instances(R.plan_from_config(raw, ROOT))}  # without seeds: one run per variant
    assert by_id["train@tacos-soft"].outs() == [
        "results/tacos/soft/checkpoint.pt",
        "results/tacos/soft/history.csv",
        "results/tacos/soft/train_metrics.json",
        "results/tacos/soft/train_info.json",
    ]
    assert by_id["prepare@charades"].outs() == ["data/processed/charades"]
    assert by_id["features@activitynet"].outs() == ["data/interim/activitynet/features.h5"]
    cmd = by_id["evaluate@tacos-fian-test"].command()
    assert cmd == (
        "python -m fian_pipeline.evaluate --params params/base.yaml params/datasets/tacos.yaml params/variants/fian.yaml --overrides params.yaml "
        "--data data/processed/tacos --text data/interim/tacos/text --checkpoint results/tacos/fian/checkpoint.pt "
        "--split test --out results/tacos/fian"
    )
    assert by_id["baseline@tacos-test"].outs()[1] == "results/tacos/prior/metrics_test.json"


def test_alternatives_follow_config_and_params(demo_plan: R.Plan, paper_plan: R.Plan) -> None:
    demo = {i.stage.name for i in R.instances(demo_plan)}
    assert {"generate", "text_fallback", "features"} <= demo  # synthetic: generated, fallback GloVe (params)
    assert not demo & {"download_annotations", "download_glove", "text", "extract"}
    paper = {i.stage.name for i in R.instances(paper_plan)}
    assert {"download_annotations", "download_glove", "text"} <= paper and not paper & {
        "generate",
        "text_fallback",
    }
    # extract instead of importing released features, for one dataset
    raw = yaml.safe_load((ROOT / PAPER).read_text())
    raw["datasets"]["charades"]["features"] = "extract"
    plan = R.plan_from_config(raw, ROOT)
    names = {i.id for i in R.instances(plan)}
    assert "extract@charades" in names and "features@charades" not in names and "features@tacos" in names
    import re

    assert re.fullmatch(R.dataset_regex(plan, "extract"), "charades")
    assert not re.fullmatch(R.dataset_regex(plan, "extract"), "tacos")
    assert not re.fullmatch(R.dataset_regex(demo_plan, "extract"), "synthetic")  # matches nothing


def test_cd_datasets_share_a_store_and_evaluate_both_test_splits(paper_plan: R.Plan) -> None:
    """charades_cd (paper.yaml) reads Charades-STA's store: no download/import/store of its own, its
    prepare job depends on charades' features job; evaluate / baseline / aggregate run on test_iid and
    test_ood (params dataset.eval_splits), never on test, and the tables wait for both."""
    by_id = {i.id: i for i in R.instances(paper_plan)}
    ids = set(by_id)
    assert not {i for i in ids if i.startswith(("features@charades_cd", "download_features@charades_cd"))}
    assert "download_annotations@charades_cd" in ids and "features@charades" in ids
    assert "data/interim/charades/features.h5" in by_id["prepare@charades_cd"].deps(paper_plan)
    assert "--features data/interim/charades/features.h5" in by_id["prepare@charades_cd"].command(paper_plan)
    assert by_id["features@charades"].outs() == ["data/interim/charades/features.h5"]
    cd = {i for i in ids if "@charades_cd-" in i and i.split("@")[0] in ("evaluate_seed", "baseline", "aggregate")}
    splits, variants = ("test_iid", "test_ood"), ("fian", "blind")  # blind: Table 7
    assert cd == {f"evaluate_seed@charades_cd-{v}-{s}-{t}" for v in variants for s in (0, 1, 2) for t in splits} | {
        f"baseline@charades_cd-{t}" for t in splits} | {f"aggregate@charades_cd-{v}-{t}" for v in variants for t in splits}
    assert "evaluate_seed@charades_cd-fian-0-test" not in ids and "evaluate_seed@charades-fian-0-test" in ids
    tables = by_id["tables"].deps(paper_plan)
    for t in ("test_iid", "test_ood"):
        assert f"results/charades_cd/fian/summary_{t}.json" in tables and f"results/charades_cd/prior/metrics_{t}.json" in tables
        assert f"results/charades_cd/fian/shuffled/summary_{t}.json" in tables  # Table 7's shuffled row
    # Table 7 reports Charades-CD once per test split, the other datasets on the config's eval_split
    assert "--datasets activitynet charades charades_cd:test_iid charades_cd:test_ood tacos" in by_id["tables"].command(paper_plan)
    # train reads the prepared folder; its model selection looks at val.h5 only (fian_pipeline.train)
    assert by_id["train_seed@charades_cd-fian-0"].command(paper_plan).count("--data data/processed/charades_cd ") == 1
    # ActivityNet-CD the same way over ActivityNet's store (not in paper.yaml: add it under datasets)
    anet = R.plan_from_config({"datasets": {"activitynet": {}, "activitynet_cd": {}}}, ROOT)
    ids = {i.id: i for i in R.instances(anet)}
    assert "data/interim/activitynet/features.h5" in ids["prepare@activitynet_cd"].deps(anet)
    assert {"evaluate@activitynet_cd-fian-test_iid", "evaluate@activitynet_cd-fian-test_ood", "evaluate@activitynet-fian-test",
            "download_annotations@activitynet_cd"} <= set(ids) and "features@activitynet_cd" not in ids


def test_cd_config_errors_name_the_file(tmp_path: Path) -> None:
    """Bad dataset-split setups fail when the config is resolved, naming the params file."""
    proj = tmp_path / "p"
    shutil.copytree(ROOT / "params", proj / "params")
    shutil.copy(ROOT / "params.yaml", proj / "params.yaml")
    config = {"datasets": {"charades_cd": {"variants": ["fian"]}, "charades": {"variants": ["fian"]}}}
    R.plan_from_config(config, proj)  # as shipped: fine
    dfile = proj / "params/datasets/charades_cd.yaml"
    text = dfile.read_text()
    dfile.write_text(text.replace("  - test_ood\n  annotation_sources", "  - test_odd\n  annotation_sources"))
    with pytest.raises(ConfigError, match=r"charades_cd.yaml: dataset.eval_splits names split 'test_odd', which is not in"):
        R.plan_from_config(config, proj)
    dfile.write_text(text.replace("    - charades_test_ood.json\n", "    - charades_test_ood2.json\n"))
    with pytest.raises(ConfigError, match=r"dataset.splits.test_ood: annotation file 'charades_test_ood2.json' is not "
                                          r"among dataset.annotation_sources"):
        R.plan_from_config(config, proj)
    dfile.write_text(text.replace("  feature_dim: 1024 ", "  feature_dim: 1000 "))
    with pytest.raises(ConfigError, match=r"dataset.feature_dim is 1000 but the store it reads \(charades"):
        R.plan_from_config(config, proj)
    dfile.write_text(text)
    with pytest.raises(ConfigError, match=r"'charades' is not among the config's datasets \['charades_cd'\]"):
        R.plan_from_config({"datasets": {"charades_cd": {"variants": ["fian"]}}}, proj)
    with pytest.raises(ConfigError, match=r"datasets.charades_cd.features: 'charades_cd' has no store of its own"):
        R.plan_from_config({"datasets": {"charades_cd": {"features": "extract"}, "charades": {}}}, proj)


def test_gpu_resources_only_when_the_config_allows(demo_plan: R.Plan, paper_plan: R.Plan) -> None:
    train = R.stage("train")
    assert R.resources(train, paper_plan)["gpu"] == 1
    assert "gpu" not in R.resources(train, demo_plan)
    assert "gpu" not in R.resources(R.stage("annotations"), paper_plan)


def _config(tmp_path: Path, text: str) -> str:
    (tmp_path / "workflow/config").mkdir(parents=True)
    shutil.copytree(ROOT / "workflow/schemas", tmp_path / "workflow/schemas")
    shutil.copytree(ROOT / "params", tmp_path / "params")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "workflow/config/c.yaml").write_text(text)
    return "workflow/config/c.yaml"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("datasets: {tacos: {variants: [fian], source: ftp}}", "datasets/tacos/source"),
        ("datasets: {tacos: {variants: [fian]}}\nextra: 1", "extra"),
        ("datasets: {}", "datasets"),
        ("datasets: {tacos: {variants: [prior]}}", "datasets/tacos/variants/0"),
    ],
)
def test_schema_errors_name_the_config_and_key(tmp_path: Path, text: str, needle: str) -> None:
    rel = _config(tmp_path, text)
    with pytest.raises(StageError, match="c.yaml") as e:
        load_plan(rel, tmp_path)
    assert needle in str(e.value)


def test_unknown_variant_or_dataset_names_the_file(tmp_path: Path) -> None:
    rel = _config(tmp_path, "datasets: {tacos: {variants: [fian, nosuch]}}")
    with pytest.raises(ConfigError, match=r"variants/nosuch\.yaml"):
        load_plan(rel, tmp_path)
    (tmp_path / "workflow/config/c.yaml").write_text("datasets: {nosuch: {variants: [fian]}}")
    with pytest.raises(ConfigError, match=r"datasets/nosuch\.yaml"):
        load_plan(rel, tmp_path)
    (tmp_path / "workflow/config/c.yaml").write_text(
        "datasets: {tacos: {variants: [fian]}}\ntables_from: charades"
    )
    with pytest.raises(ConfigError, match="tables_from"):
        load_plan(rel, tmp_path)


def test_bad_params_layer_fails_at_plan_time(tmp_path: Path) -> None:
    rel = _config(tmp_path, "datasets: {tacos: {variants: [soft]}}")
    (tmp_path / "params/variants/soft.yaml").write_text("model:\n  atention: soft\n")
    with pytest.raises(ConfigError, match=r"soft\.yaml.*atention"):
        load_plan(rel, tmp_path)


def test_fian_cli_dispatches_to_the_stage_modules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fian_pipeline import cli

    assert cli.main(["--help"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("render", "train", "tables", "demo"))
    assert cli.main(["nosuch"]) == 2 and "unknown command" in capsys.readouterr().err
    assert cli.main(["tables", "--results", str(tmp_path / "none"), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r/table1.tex").is_file()  # `fian tables ...` == `python -m fian_pipeline.tables ...`
    assert cli.main(["render", "--check", "--root", str(ROOT)]) == 0  # `fian render`


def test_missing_config_file_and_bad_dataset_name(tmp_path: Path) -> None:
    with pytest.raises(StageError, match=r"nosuch\.yaml: workflow config not found"):
        load_plan("workflow/config/nosuch.yaml", tmp_path)
    rel = _config(tmp_path, "datasets: {TACoS: {variants: [fian]}}")
    with pytest.raises(StageError, match="TACoS"):
        load_plan(rel, tmp_path)  # the schema's name pattern
    with pytest.raises(ConfigError, match="TACoS"):
        R.plan_from_config(
            {"datasets": {"TACoS": {"variants": ["fian"]}}}, tmp_path
        )  # without the schema too


def test_own_word_vectors_replace_the_glove_download(tmp_path: Path) -> None:
    """text.vectors_file: the text job reads that file (Snakemake input, DVC dep and item) and no
    download_glove job is planned for it; the per-dataset target leaves the tables out."""
    rel = _config(tmp_path, "datasets: {tacos: {variants: [fian]}}")
    tacos = tmp_path / "params/datasets/tacos.yaml"
    tacos.write_text(tacos.read_text() + "\ntext:\n  vectors_file: data/raw/tacos/vectors/my.300d.txt\n")
    plan = load_plan(rel, tmp_path)
    by_id = {i.id: i for i in R.instances(plan)}
    assert "download_glove" not in by_id
    text = by_id["text@tacos"]
    assert "--glove data/raw/tacos/vectors/my.300d.txt " in text.command(plan)
    assert "data/raw/tacos/vectors/my.300d.txt" in text.deps(plan)
    from fian_pipeline.render import render_dvc

    stages = yaml.safe_load(render_dvc(plan, rel, tmp_path))["stages"]
    assert stages["text"]["foreach"]["tacos"]["vectors"] == "data/raw/tacos/vectors/my.300d.txt"
    assert "${item.vectors}" in stages["text"]["do"]["deps"]
    targets = R.dataset_targets(plan, "tacos")
    assert "results/tacos/fian/metrics_test.json" in targets and not [t for t in targets if "table" in t]
