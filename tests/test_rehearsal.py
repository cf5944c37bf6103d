"""The rehearsal (workflow/config/paper-mini.yaml, docs/PIPELINE.md "Rehearsal").

Fast: the config plans the paper's whole matrix, and its per-table-dataset ``tables_from`` puts
each tiny dataset's numbers in its own tables (values written by hand, read back from the LaTeX).
Slow: the matrix run by Snakemake with 4 jobs on 2 cores, SIGKILLed as a process group while
several train jobs run, rerun to completion, then checked against an uninterrupted reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fian.config import ConfigError
from fian_pipeline import registry as R
from fian_pipeline.tables import main as tables_main

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "workflow/config/paper-mini.yaml"
PAPER = ROOT / "workflow/config/paper.yaml"


def test_mini_config_plans_the_papers_whole_matrix() -> None:
    mini = R.plan_from_config(yaml.safe_load(MINI.read_text()), ROOT)
    paper = R.plan_from_config(yaml.safe_load(PAPER.read_text()), ROOT)
    assert {d.name: d.variants for d in mini.datasets} == {f"{d.name}_mini": d.variants for d in paper.datasets}
    assert all(d.baseline and d.source == "generate" for d in mini.datasets)
    assert dict(mini.tables_map) == {"activitynet": "activitynet_mini", "charades": "charades_mini",
                                     "tacos": "tacos_mini"}  # fmt: skip
    # every "(ours)" row of the six tables names a run the matrix makes
    from fian.reports.paper_results import load_paper_results

    made = {(d.name, v) for d in mini.datasets for v in (*d.variants, R.BASELINE)}
    for spec in load_paper_results().values():
        for _, variant in spec.ours:
            assert (f"{spec.dataset}_mini", variant) in made
    args = R.plan_args(R.stage("tables"), mini)
    assert args == ["--split", "test", "--ours-from", "activitynet=activitynet_mini",
                    "--ours-from", "charades=charades_mini", "--ours-from", "tacos=tacos_mini"]  # fmt: skip
    inputs = R.plan_inputs(R.stage("tables"), mini)
    assert len(inputs) == 15 + 3 and "results/tacos_mini/stride2/metrics_test.json" in inputs


@pytest.mark.parametrize(
    ("tables_from", "needle"),
    [({"tacos": "nosuch"}, "tables_from.tacos='nosuch'"), ({"youcook": "tacos_mini"}, "tables_from.youcook")],
)
def test_bad_tables_map_names_the_key(tables_from: dict, needle: str) -> None:
    config = {"datasets": {"tacos_mini": {"variants": ["fian"], "source": "generate"}}, "tables_from": tables_from}
    with pytest.raises(ConfigError, match="workflow config") as e:
        R.plan_from_config(config, ROOT)
    assert needle in str(e.value)


def _metrics(path: Path, value: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ms = {f"R@{n},IoU={m}": value for n in (1, 5) for m in (0.1, 0.3, 0.5, 0.7)}
    path.write_text(json.dumps({**ms, "mIoU": value, "unit": "fraction"}))


def test_tables_take_each_tables_rows_from_its_mapped_dataset(tmp_path: Path) -> None:
    res = tmp_path / "results"
    _metrics(res / "tacos_mini/stride2/metrics_test.json", 0.1234)
    _metrics(res / "charades_mini/fian/metrics_test.json", 0.5)
    _metrics(res / "tacos/stride2/metrics_test.json", 0.9)  # the real dataset's run: must not be used
    out = tmp_path / "reports"
    assert tables_main(["--results", str(res), "--out", str(out), "--ours-from", "tacos=tacos_mini",
                        "--ours-from", "charades=charades_mini"]) == 0  # fmt: skip
    t6 = (out / "table6.tex").read_text()
    row = next(line for line in t6.splitlines() if line.startswith(r"$1/2\theta_k$ (ours)"))
    assert "12.34" in row and "90.00" not in row
    assert "REHEARSAL TACoS (tiny, generated)" in t6 and "not comparable" in t6
    t3 = (out / "table3.tex").read_text()
    assert "50.00" in next(line for line in t3.splitlines() if line.startswith("FIAN (ours)"))
    t1 = (out / "table1.tex").read_text()  # activitynet not mapped: its own (absent) runs
    assert "---" in next(line for line in t1.splitlines() if line.startswith("FIAN (ours)"))
    assert "REHEARSAL" not in t1


def test_ours_from_cannot_mix_one_dataset_and_pairs(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        tables_main(["--results", str(tmp_path), "--out", str(tmp_path / "r"), "--ours-from", "synthetic",
                     "--ours-from", "tacos=tacos_mini"])  # fmt: skip
    assert e.value.code == 2 and not (tmp_path / "r").exists()
