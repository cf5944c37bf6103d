"""Snakemake rules and dvc.yaml agree with the registry and with each other.

The files on disk must equal their rendering (`fian render --check`), and for the demo and the
paper configs the jobs Snakemake plans (`snakemake -n -p --forceall`) and the stages DVC resolves
from the rendered dvc.yaml (dvc's own foreach resolution) have the same commands, dependencies
and outputs per stage instance as `fian_pipeline.registry.instances`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fian_pipeline import registry as R
from fian_pipeline.render import check, load_plan, render_dvc, rendered_files

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONFIGS = ["workflow/config/default.yaml", "workflow/config/paper.yaml", "workflow/config/paper-mini.yaml"]

Job = tuple[str, frozenset[str], frozenset[str]]  # (command, non-params deps, outs)


def test_rendered_files_are_up_to_date() -> None:
    diffs = check(rendered_files("workflow/config/default.yaml", ROOT), ROOT)
    assert not diffs, "rendered files differ from the registry; run `fian render`:\n" + "".join(diffs)[:3000]


def _registry_jobs(plan: R.Plan) -> dict[str, Job]:
    out = {}
    for inst in R.instances(plan):
        deps = frozenset(d for d in inst.deps(plan) if not d.startswith("params/"))
        out[inst.id] = (inst.command(plan), deps, frozenset(inst.outs()))
    return out


def _snakemake_jobs(config: str, tmp: Path, plan: R.Plan) -> dict[str, Job]:
    """Jobs of a dry run, in a copy of the workflow files (never touching the checkout's .snakemake/)."""
    shutil.copy(ROOT / "Snakefile", tmp / "Snakefile")
    for d in ("workflow", "params"):
        shutil.copytree(ROOT / d, tmp / d)
    shutil.copy(ROOT / "params.yaml", tmp / "params.yaml")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    proc = subprocess.run(
        [str(BIN / "snakemake"), "-n", "-p", "--forceall", "--cores", "1", "--configfile", config],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    jobs: dict[str, Job] = {}
    for block in re.split(r"\n(?=\[[^\n]*\]\nrule )", proc.stdout):
        m = re.search(r"^rule (\w+):", block, re.M)
        if not m or m.group(1) == "all":
            continue
        fields = dict(re.findall(r"^    (\w+): (.*)$", block, re.M))
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        assert shell, block
        wildcards = (
            dict(kv.split("=", 1) for kv in fields["wildcards"].split(", ")) if "wildcards" in fields else {}
        )
        stage = R.stage(m.group(1))
        key = "-".join(wildcards[w] for w in stage.wildcards)
        cmd = re.sub(r" (> logs/\S+ 2>&1|2> logs/\S+)$", "", shell.group(1).strip())
        assert shell.group(1).strip().endswith(" 2> " + R.fill(stage.log, wildcards)) == stage.console, shell.group(1)
        inputs = [s for s in fields.get("input", "").split(", ") if s]
        deps = frozenset(i for i in inputs if not i.startswith("params/"))
        # the params layers are not inputs (their file times decide nothing; the values are params:)
        assert not [i for i in inputs if i.startswith("params/")], (m.group(1), inputs)
        res = dict(kv.split("=", 1) for kv in fields["resources"].split(", "))
        for rk, rv in R.resources(stage, plan).items():  # mem_mb, runtime, gpu (when the config allows)
            assert res[rk] == str(rv), (m.group(1), rk, res)
        assert ("gpu" in res and res["gpu"] != "0") == ("gpu" in R.resources(stage, plan)), (m.group(1), res)
        jobs[f"{stage.name}@{key}" if key else stage.name] = (
            " ".join(cmd.split()),
            deps,
            frozenset(fields["output"].split(", ")),
        )
    return jobs


def _winning_keys(files: list[str], prefixes: tuple[str, ...], root: Path) -> dict[str, list[str]]:
    """{file: sorted dotted keys} of the keys under ``prefixes`` that each file sets and no later
    file sets (a plain reference: flatten each file, let the later one win)."""
    import yaml

    def flat(d: object, pre: str = "") -> dict[str, object]:
        if isinstance(d, dict) and d:
            return {k2: v2 for k, v in d.items() for k2, v2 in flat(v, f"{pre}.{k}" if pre else k).items()}
        return {pre: d}

    owner: dict[str, str] = {}
    for f in files:
        for k in flat(yaml.safe_load((root / f).read_text()) or {}):
            for old in [o for o in owner if o.startswith(k + ".") or k.startswith(o + ".")]:
                del owner[old]  # a leaf replaces a subtree (and a subtree a leaf)
            owner[k] = f
    out: dict[str, list[str]] = {}
    for k, f in owner.items():
        if any(k == p or k.startswith(p + ".") for p in prefixes):
            out.setdefault(f, []).append(k)
    return {f: sorted(v) for f, v in out.items()}


def _over_keys(path: Path, prefixes: tuple[str, ...]) -> list[str]:
    """The keys of params.yaml (read plainly) under ``prefixes``, or above one (a whole value)."""
    import yaml

    def flat(d: object, pre: str = "") -> list[str]:
        if isinstance(d, dict) and d:
            return [k2 for k, v in d.items() for k2 in flat(v, f"{pre}.{k}" if pre else k)]
        return [pre]

    keys = flat(yaml.safe_load(path.read_text()))
    return sorted(k for k in keys if any(k == p or k.startswith(p + ".") or p.startswith(k + ".") for p in prefixes))


def _dvc_jobs(tmp: Path, plan: R.Plan, config: str) -> dict[str, Job]:
    from dvc.repo import Repo

    shutil.copytree(ROOT / "params", tmp / "params")
    shutil.copy(ROOT / "params.yaml", tmp / "params.yaml")
    (tmp / "dvc.yaml").write_text(render_dvc(plan, config, ROOT))
    Repo.init(str(tmp), no_scm=True)
    jobs: dict[str, Job] = {}
    with Repo(str(tmp)) as repo:
        for st in repo.index.stages:
            params = {d.def_path: sorted(set(d.params)) for d in st.deps if type(d).__name__ == "ParamsDependency"}
            name, _, key = st.name.partition("@")
            wildcards = dict(zip(R.stage(name).wildcards, key.split("-"), strict=False)) if key else {}
            # each key the stage reads is tracked under the layer that wins for it, and nowhere else
            # (expected: the layer files read plainly, later wins)
            expected = _winning_keys([R.fill(p, wildcards) for p in R.stage(name).params_files()],
                                     R.stage(name).keys, tmp)  # fmt: skip
            # and every key it reads under params.yaml too (listed there at null, whatever it holds)
            over = _over_keys(tmp / "params.yaml", R.stage(name).keys)
            if over:
                expected["params.yaml"] = over
            assert params == expected, (st.name, params, expected)
            deps = frozenset(d.def_path for d in st.deps if type(d).__name__ != "ParamsDependency")
            jobs[st.name] = (st.cmd, deps, frozenset(o.def_path for o in st.outs))
    return jobs


@pytest.mark.parametrize("config", CONFIGS)
def test_snakemake_dvc_and_registry_agree(config: str, tmp_path: Path) -> None:
    plan = load_plan(config, ROOT)
    reg = _registry_jobs(plan)
    (tmp_path / "smk").mkdir()
    (tmp_path / "dvc").mkdir()
    smk = _snakemake_jobs(config, tmp_path / "smk", plan)
    dvc = _dvc_jobs(tmp_path / "dvc", plan, config)
    assert sorted(smk) == sorted(reg), "Snakemake plans other jobs than the registry"
    assert sorted(dvc) == sorted(reg), "dvc.yaml resolves to other stages than the registry"
    for job_id, (cmd, deps, outs) in reg.items():
        assert smk[job_id] == (cmd, deps, outs), job_id
        assert dvc[job_id] == (cmd, deps, outs), job_id


def test_dvc_declares_metrics_and_plots() -> None:
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert stages["train"]["do"]["metrics"] == ["results/${item.dataset}/${item.variant}/train_metrics.json"]
    assert stages["train"]["do"]["plots"] == [
        {"results/${item.dataset}/${item.variant}/history.csv": {"x": "epoch", "y": "loss"}}
    ]
    assert stages["evaluate"]["do"]["metrics"] == [
        "results/${item.dataset}/${item.variant}/metrics_${item.split}.json"
    ]
    params = {f: keys for entry in stages["train"]["do"]["params"] for f, keys in entry.items()}
    # the demo's training values live in its dataset file: tracked there, not in base.yaml
    assert "train.grad_clip" in params["params/base.yaml"] and "train.lr" not in params["params/base.yaml"]
    assert "train.lr" in params["params/datasets/${item.dataset}.yaml"]
    assert "params/variants/${item.variant}.yaml" not in params  # fian.yaml sets nothing
    assert "dataset.synthetic.noise" not in str(stages["train"])  # the generator's keys are not train's
    # params.yaml (the overrides layer): every key train reads, at null in git, a dataset's identity never
    assert {"train.epochs", "train.lr", "model.window_sizes", "eval.iou_rule"} <= set(params["params.yaml"])
    assert not {"dataset.name", "tracking.enabled", "text.word_dim"} & set(params["params.yaml"])


def test_check_reports_a_hand_edited_file(tmp_path: Path) -> None:
    files = rendered_files("workflow/config/default.yaml", ROOT)
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert check(files, tmp_path) == []
    smk = tmp_path / "workflow/rules/model.smk"
    smk.write_text(smk.read_text().replace("--split {wildcards.split}", "--split test"))
    diffs = check(files, tmp_path)
    assert (
        len(diffs) == 1 and "model.smk" in diffs[0] and "+++ workflow/rules/model.smk (rendered)" in diffs[0]
    )


def test_multi_gpu_training_runs_under_torchrun_in_both_tools(tmp_path: Path) -> None:
    """`gpus: N > 1`: the train job asks for N GPUs and is launched as N DDP processes by torchrun,
    identically in Snakemake and DVC; evaluate keeps one GPU and a plain `python -m`."""
    import yaml

    config = yaml.safe_load((ROOT / "workflow/config/default.yaml").read_text())
    config["gpus"] = 4
    conf = tmp_path / "gpus4.yaml"
    conf.write_text(yaml.safe_dump(config))
    plan = load_plan(conf, ROOT)
    reg = _registry_jobs(plan)
    train = reg["train@synthetic-fian"][0]
    assert train.startswith("torchrun --standalone --nproc_per_node 4 -m fian_pipeline.train "), train
    assert reg["evaluate@synthetic-fian-test"][0].startswith("python -m fian_pipeline.evaluate ")
    assert R.resources(R.stage("train"), plan)["gpu"] == 4
    assert R.resources(R.stage("evaluate"), plan)["gpu"] == 1
    (tmp_path / "smk").mkdir()
    (tmp_path / "dvc").mkdir()
    smk = _snakemake_jobs(str(conf), tmp_path / "smk", plan)  # also checks each job's gpu resource
    dvc = _dvc_jobs(tmp_path / "dvc", plan, str(conf))
    assert smk["train@synthetic-fian"][0] == train
    assert dvc["train@synthetic-fian"][0] == train


def _two_seeds_config(tmp: Path) -> Path:
    """The demo's config with `seeds: [0, 1]` and one ablation beside FIAN."""
    import yaml

    config = yaml.safe_load((ROOT / "workflow/config/default.yaml").read_text())
    config["seeds"] = [0, 1]
    config["datasets"]["synthetic"]["variants"] = ["fian", "soft"]
    conf = tmp / "two-seeds.yaml"
    conf.write_text(yaml.safe_dump(config))
    return conf


def test_two_seeds_plan_two_train_jobs_per_variant_in_both_tools(tmp_path: Path) -> None:
    """Issue 16: with `seeds: [0, 1]` Snakemake's dry run, DVC's stages (and `dvc status`) and the
    registry agree on two train and two evaluate jobs per variant (train.seed from the command
    line, a run folder and state folder per seed), one aggregate job per variant and one paired
    comparison of the ablation with FIAN; the tables read the summaries."""
    conf = _two_seeds_config(tmp_path)
    plan = load_plan(conf, ROOT)
    assert plan.seeds == (0, 1)
    reg = _registry_jobs(plan)
    (tmp_path / "smk").mkdir()
    (tmp_path / "dvc").mkdir()
    smk = _snakemake_jobs(str(conf), tmp_path / "smk", plan)
    dvc = _dvc_jobs(tmp_path / "dvc", plan, str(conf))
    assert sorted(smk) == sorted(dvc) == sorted(reg)
    for job_id, job in reg.items():
        assert smk[job_id] == dvc[job_id] == job, job_id
    train = sorted(j for j in reg if j.startswith("train"))
    assert train == ["train_seed@synthetic-fian-0", "train_seed@synthetic-fian-1",
                     "train_seed@synthetic-soft-0", "train_seed@synthetic-soft-1"]  # fmt: skip
    cmd, _, outs = reg["train_seed@synthetic-soft-1"]
    assert cmd.endswith("--out results/synthetic/soft/seed1 --state state/train/synthetic/soft/seed1 --seed 1")
    assert "results/synthetic/soft/seed1/checkpoint.pt" in outs
    assert sorted(j for j in reg if j.startswith("evaluate")) == [
        f"evaluate_seed@synthetic-{v}-{s}-test" for v in ("fian", "soft") for s in (0, 1)
    ]
    assert {j for j in reg if j.startswith(("aggregate", "compare"))} == {
        "aggregate@synthetic-fian-test", "aggregate@synthetic-soft-test", "compare@synthetic-soft-test",
        "aggregate_shuffle@synthetic-fian-test"}  # fmt: skip
    # the video-shuffle check (Table 7, the demo's `shuffle: true`): one job per seed of FIAN, aggregated
    assert sorted(j for j in reg if j.startswith("shuffle")) == [f"shuffle_seed@synthetic-fian-{s}-test" for s in (0, 1)]
    cmd, deps, outs = reg["shuffle_seed@synthetic-fian-1-test"]
    assert "--shuffle-videos" in cmd and cmd.endswith("--out results/synthetic/fian/seed1/shuffled --seed 1")
    assert "results/synthetic/fian/seed1/checkpoint.pt" in deps and "results/synthetic/fian/seed1/shuffled/metrics_test.json" in outs
    cmd, deps, _ = reg["compare@synthetic-soft-test"]
    assert {"results/synthetic/fian/seed1/predictions_test.jsonl", "results/synthetic/soft/seed0/predictions_test.jsonl"} <= deps
    assert " --resamples 2000 " in cmd and " --level 0.95 " in cmd
    cmd, deps, _ = reg["tables"]
    assert cmd.endswith("--seeds 0 1 --datasets synthetic --stand-in synthetic") and "results/synthetic/soft/summary_test.json" in deps
    assert "results/synthetic/fian/shuffled/summary_test.json" in deps
    assert "results/synthetic/soft/compare_fian_test.json" in deps
    # `dvc status` (as typed) lists every per-seed job
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    status = subprocess.run([str(BIN / "dvc"), "status"], cwd=tmp_path / "dvc", env=env, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert status.returncode == 0, status.stderr[-2000:]
    listed = set(re.findall(r"^(\S+@\S+):", status.stdout, re.M))
    assert {f"train_seed@synthetic-{v}-{s}" for v in ("fian", "soft") for s in (0, 1)} <= listed, status.stdout[-3000:]
