"""The Snakefile end to end on a tiny synthetic config (the demo's DAG, smaller numbers), a second
run that does nothing, and config/params validation before anything runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

SMALL = {
    "dataset": {"synthetic": {"n_videos": {"train": 24, "val": 6, "test": 6}, "queries_per_video": 2}},
    "text": {"glove_epochs": 3},
    "model": {"hidden": 16, "heads": 2, "self_attn_heads": 2, "ffn_dim": 32},
    "train": {"epochs": 1, "batch_size": 16},
    "tracking": {"enabled": False},  # MLflow has its own test (test_mlflow_server.py); saves its import time
}


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _project(tmp: Path) -> Path:
    """A copy of the workflow files and params; the synthetic layer made tiny."""
    proj = tmp / "proj"
    proj.mkdir()
    shutil.copy(ROOT / "Snakefile", proj / "Snakefile")
    shutil.copytree(ROOT / "workflow", proj / "workflow")
    shutil.copytree(ROOT / "params", proj / "params")
    shutil.copy(ROOT / "params.yaml", proj / "params.yaml")
    syn = proj / "params/datasets/synthetic.yaml"
    syn.write_text(yaml.safe_dump(_merge(yaml.safe_load(syn.read_text()), SMALL)))
    return proj


def _snakemake(proj: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{proj}/mlflow.db",
    }
    proc = subprocess.run(
        [str(BIN / "snakemake"), "--profile", "workflow/profiles/local", "--cores", "2", *args],
        cwd=proj, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    return proc


@pytest.mark.slow
def test_demo_dag_end_to_end_then_nothing_to_do(tmp_path: Path) -> None:
    proj = _project(tmp_path)
    first = _snakemake(proj)
    # the console: one line per epoch of the training job (stdout); the progress bar stays in the log
    assert re.search(r"^\[synthetic/fian\] epoch 1/1 loss \d+\.\d{4} val R@1,IoU=0\.5 \d+\.\d\d%", first.stdout, re.M), first.stdout[-3000:]
    assert re.search(r"epoch +1/1 [|] loss", (proj / "logs/train/synthetic-fian.log").read_text())
    for rel in (
        "results/synthetic/fian/metrics_test.json",
        "results/synthetic/prior/metrics_test.json",
        "results/synthetic/fian/history.csv",
        "reports/figures/synthetic/fian/timeline_test.png",
        "reports/figures/synthetic/fian/training_curves_test.png",
        "reports/figures/synthetic/fian/attention_test.png",
        "results/synthetic/blind/metrics_test.json",  # Table 7: blind FIAN and the shuffled videos
        "results/synthetic/fian/shuffled/metrics_test.json",
        *[f"reports/table{k}.tex" for k in range(1, 8)],
    ):
        assert (proj / rel).is_file(), rel
    assert "FIAN (ours)" in (proj / "reports/table1.tex").read_text()
    assert "SYNTHETIC demo" in (proj / "reports/table1.tex").read_text()
    t7 = (proj / "reports/table7.md").read_text()
    shuffled = json.loads((proj / "results/synthetic/fian/shuffled/metrics_test.json").read_text())
    blind = json.loads((proj / "results/synthetic/blind/metrics_test.json").read_text())
    assert (f"| FIAN, videos shuffled (ours) on synthetic | {100 * shuffled['R@1,IoU=0.5']:.2f} |" in t7
            and f"| Blind FIAN (ours) on synthetic | {100 * blind['R@1,IoU=0.5']:.2f} |" in t7), t7  # fmt: skip
    assert (proj / "logs/train/synthetic-fian.log").is_file()
    # every job ran in the workflow's pre-imported runner (fian_pipeline/runner.py): its log names
    # each stage command and its exit; none declined, none ran itself
    [runner_log] = (proj / ".snakemake/log").glob("*.fian-runner.log")
    ran = re.findall(r"job \d+: (fian_pipeline\.\w+) ", runner_log.read_text())
    assert {"fian_pipeline.train", "fian_pipeline.evaluate", "fian_pipeline.baseline", "fian_pipeline.tables"} <= set(ran)
    assert len(re.findall(r"job \d+: exit 0 after", runner_log.read_text())) == len(ran)
    assert "declined" not in runner_log.read_text() and "fian runner" not in "".join(
        p.read_text() for p in (proj / "logs").rglob("*.log"))  # fmt: skip
    again = _snakemake(proj)
    assert "Nothing to be done" in again.stdout + again.stderr
    # the demo job on the finished project: says there is nothing to do, repeats the stages' loud
    # warnings, prints the headline of FIAN vs the moment prior
    shutil.copy(ROOT / "dvc.yaml", proj / "dvc.yaml")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    demo = subprocess.run(
        [sys.executable, "-m", "fian_pipeline.demo", "--cores", "1"],
        cwd=proj,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = demo.stdout + demo.stderr
    assert demo.returncode == 0, out[-3000:]
    assert "Nothing to do: every output is up to date" in out
    assert "synthetic/fian" in out and "synthetic/prior (baseline)" in out and "%" in out
    assert "synthetic/blind (no video)" in out and "synthetic/fian (videos shuffled)" in out  # Table 7's rows
    # the headline says the protocol its metrics files record (the default: IoU > m, per-level NMS)
    assert "split; hit: IoU > m (S4.2 wording, 2D-TAN's code); one ranked list per m, NMS at m - 0.05" in out, out[-2000:]
    from fian_pipeline.demo import loud_warnings

    warnings = "\n".join(loud_warnings(proj / "logs", since=0))
    assert "SYNTHETIC" in warnings and "FALLBACK" in warnings  # the stages' loud reports, found again
    # the finished run is recorded in dvc.lock (the repo's .gitignore must let DVC write it), and
    # DVC then agrees that nothing is out of date
    shutil.copy(ROOT / ".gitignore", proj / ".gitignore")
    subprocess.run(["git", "init", "-q"], cwd=proj, check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=proj, check=True, env=env)
    from fian_pipeline.demo import record_in_dvc

    cwd = os.getcwd()
    try:
        os.chdir(proj)
        said = record_in_dvc(env)
    finally:
        os.chdir(cwd)
    assert "recorded in dvc.lock" in said, said
    status = subprocess.run([str(BIN / "dvc"), "status"], cwd=proj, env=env, capture_output=True, text=True)
    assert "up to date" in status.stdout, status.stdout[-2000:]
    _readme_commands_on_the_finished_project(proj, env)


def _readme_commands_on_the_finished_project(proj: Path, env: dict[str, str]) -> None:
    """README "Where to read the results" and "Changing params and running experiments", each
    command as written there (tests/readme_commands.py), on the finished tiny project: the report
    shows each run's metrics as its file has them; a DVC experiment `-S key=value` changes one line
    of params.yaml and retrains; the documented `dvc exp show` call is narrow; the offline plots
    page loads nothing from the network; after DVC ran, Snakemake would rerun until `--touch`
    (which the demo does by itself)."""
    import csv
    import difflib
    import io
    import json

    import readme_commands as RC

    from fian.train import load_checkpoint
    from fian_pipeline.demo import stamp_lock

    env = {**env, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}  # fmt: skip
    ran: list[str] = []

    def run(words: list[str]) -> str:
        exe = str(BIN / words[0]) if (BIN / words[0]).exists() else words[0]
        proc = subprocess.run([exe, *words[1:]], cwd=proj, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{words}: {proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout + proc.stderr

    def readme(prefix: str, *extra: str) -> str:
        words = RC.one(prefix)
        ran.append(" ".join(words))
        return run([*words, *extra])

    stamp_lock(proj)  # as `make demo` does after recording a run in dvc.lock
    run(["git", "add", "-A"])
    run(["git", "commit", "-qm", "demo run"])  # README: commit dvc.lock once, to compare with

    # snakemake --report: metrics (labels read from the files), figures, tables, each with a caption
    readme("snakemake --report")
    html = (proj / "report.html").read_text()
    found = re.search(r"var results = (\{.*?\});\s*</script>", html, re.S)
    assert found, "no results in report.html"
    results = json.loads(found.group(1))
    assert results["results/synthetic/fian/shuffled/metrics_test.json"]["labels"]["run"] == "fian (videos shuffled)"
    for run_name in ("fian", "prior", "blind", "fian/shuffled"):
        path = f"results/synthetic/{run_name}/metrics_test.json"
        m, labels = json.loads((proj / path).read_text()), results[path]["labels"]
        for key in ("R@1,IoU=0.5", "R@5,IoU=0.7", "mIoU"):
            assert labels[f"{key} (%)"] == f"{100 * m[key]:.2f}", (path, key, labels)
        assert labels["hit"] == "IoU > m" and "R&#64;n,IoU=m" in results[path]["caption"], labels
    assert results["results/synthetic/fian/train_metrics.json"]["labels"]["best epoch"] == "1"
    assert sorted(k for k, v in results.items() if v["mime_type"] == "image/png") == [
        f"reports/figures/synthetic/{v}/{f}_test.png" for v in ("blind", "fian")
        for f in ("attention", "timeline", "training_curves")]  # fmt: skip
    assert sorted(v["labels"]["table"] for k, v in results.items() if k.startswith("reports/table")) == [
        f"Table {k}" for k in range(1, 8)]
    assert "Table 7 (ours, not in the paper)" in results["reports/table7.tex"]["caption"]
    assert all(v["caption"].strip() for v in results.values())
    readme("dvc metrics show")

    # a DVC experiment, typed as DVC users do: params.yaml changes by one line, training reruns
    before = (proj / "params.yaml").read_text()
    readme("dvc exp run")
    changed = [ln for ln in difflib.unified_diff(before.splitlines(), (proj / "params.yaml").read_text().splitlines(),
                                                  n=0, lineterm="") if ln[:1] in "+-" and ln[:3] not in ("+++", "---")]  # fmt: skip
    (setting,) = [w for w in RC.one("dvc exp run") if "=" in w]  # train.lr=0.001
    key, value = setting.split("=")
    assert len(changed) == 2 and changed[1].startswith(f"+  {key.split('.')[-1]}: {value} "), changed
    assert load_checkpoint(proj / "results/synthetic/fian/checkpoint.pt")["config"]["train"]["lr"] == float(value)
    header = next(csv.reader(io.StringIO(readme("dvc exp show", "--csv"))))
    assert f"params.yaml:{key}" in header, header
    headline = {f"results/synthetic/{r}/metrics_test.json:{k}" for r in ("fian", "prior", "blind", "fian/shuffled")
                for k in ("R@1,IoU=0.5", "R@1,IoU=0.7", "R@5,IoU=0.5", "R@5,IoU=0.7", "mIoU")}  # fmt: skip
    others = [c for c in header if c not in {"Experiment", "rev", "typ", "Created", "parent", f"params.yaml:{key}"} | headline]
    assert not others, others  # ~200 columns without the documented call
    readme("dvc params diff")
    diff = json.loads(run(["dvc", "params", "diff", "--json"]))
    assert diff["params.yaml"][key]["old"] is None and diff["params.yaml"][key]["new"] == float(value), diff
    readme("dvc metrics diff")
    readme("fian plots-template")
    readme("dvc plots diff")
    page = (proj / "dvc_plots/index.html").read_text()
    assert "vegaEmbed(" in page and not re.search(r"<script[^>]*\ssrc=", page)  # nothing from a CDN

    # Snakemake after DVC ran: stale until touched; the demo touches by itself when DVC is clean
    stale = run(["snakemake", "-n", "--profile", "workflow/profiles/local", "--cores", "1"])
    assert re.search(r"^rule train:", stale, re.M), stale[-2000:]
    demo = run([sys.executable, "-m", "fian_pipeline.demo", "--cores", "1"])
    assert "`snakemake --touch` recorded them for Snakemake" in demo and "Nothing to do" in demo, demo[-3000:]
    readme("snakemake --touch")
    assert "Nothing to be done" in run(["snakemake", "-n", "--profile", "workflow/profiles/local", "--cores", "1"])
    readme("git checkout params.yaml")
    assert (proj / "params.yaml").read_text() == before
    assert sorted(ran) == sorted(RC.e2e()), "README commands this test does not run (or no longer exist)"

    # issue 16 on the same project (its data stages done): two seeds of FIAN, each its own train and
    # evaluate job, aggregated; the tables in mean ± std (the compare stage on real predictions:
    # tests/test_train.py::test_two_seeds_through_the_stages; its wiring: tests/test_render_drift.py)
    _two_seeds_on_the_finished_demo(proj)


def _two_seeds_on_the_finished_demo(proj: Path) -> None:
    config = yaml.safe_load((proj / "workflow/config/default.yaml").read_text())
    config["seeds"] = [0, 1]
    config["datasets"]["synthetic"].update(plots=False, variants=["fian"])  # blind's seeds: tests/test_bias.py
    (proj / "two-seeds.yaml").write_text(yaml.safe_dump(config))
    # on 2 cores, the two seeds' jobs side by side (the rules ask for 4 threads)
    run = _snakemake(proj, "--configfile", "two-seeds.yaml", "--set-threads", "train_seed=1", "evaluate_seed=1")
    out = run.stdout + run.stderr
    for rule, n in (("train_seed", 2), ("evaluate_seed", 2), ("aggregate", 1), ("shuffle_seed", 2),
                    ("aggregate_shuffle", 1), ("tables", 1)):
        assert re.search(rf"^{rule} +{n}$", out, re.M), (rule, out[-3000:])
    assert re.search(r"^\[synthetic/fian seed 1\] epoch 1/1 loss", run.stdout, re.M)
    summary = json.loads((proj / "results/synthetic/fian/summary_test.json").read_text())
    r1 = [json.loads((proj / f"results/synthetic/fian/seed{s}/metrics_test.json").read_text())["R@1,IoU=0.5"] for s in (0, 1)]
    assert summary["seeds"] == [0, 1] and summary["metrics"]["R@1,IoU=0.5"]["values"] == {"0": r1[0], "1": r1[1]}
    assert [r["train"]["seed"] for r in summary["runs"]] == [0, 1]
    t1 = (proj / "reports/table1.tex").read_text()
    mean, std = 100 * (r1[0] + r1[1]) / 2, 100 * abs(r1[0] - r1[1]) / 2**0.5
    assert rf"{mean:.2f}\,{{\scriptsize$\pm$}}\,{std:.2f}" in t1 and "$n = 2$ seeds (0, 1)" in t1
    assert "FIAN (ours) on synthetic" in (proj / "reports/table1.md").read_text()
    csv = (proj / "reports/table1.csv").read_text()
    assert "table1,stand-in,FIAN (ours),synthetic,fian,1," in csv
    prov = json.loads((proj / "reports/table1.provenance.json").read_text())
    assert next(r for r in prov["rows"] if r["variant"] == "fian")["seeds"] == [0, 1]
    # Table 7: the shuffled runs of both seeds, in mean ± std
    shuffled = json.loads((proj / "results/synthetic/fian/shuffled/summary_test.json").read_text())
    assert shuffled["seeds"] == [0, 1] and [r["evaluate"]["seed"] for r in shuffled["runs"]] == [0, 1]
    s5 = [shuffled["metrics"]["R@1,IoU=0.5"]["values"][s] for s in ("0", "1")]
    mean, std = 100 * (s5[0] + s5[1]) / 2, 100 * abs(s5[0] - s5[1]) / 2**0.5
    assert f"| FIAN, videos shuffled (ours) on synthetic | {mean:.2f} ± {std:.2f} |" in (proj / "reports/table7.md").read_text()


def test_bad_config_fails_before_any_job(tmp_path: Path) -> None:
    proj = _project(tmp_path)
    (proj / "bad.yaml").write_text("datasets: {synthetic: {variants: [fian], source: ftp}}\n")
    proc = _snakemake(proj, "-n", "--configfile", "bad.yaml", check=False)
    assert proc.returncode != 0
    assert "source" in proc.stdout + proc.stderr and "ftp" in proc.stdout + proc.stderr
    # a key given twice: Snakemake's reader keeps the last silently; the Snakefile names file and key
    (proj / "twice.yaml").write_text("datasets:\n  synthetic: {variants: [fian]}\n  synthetic: {variants: [cma]}\n")
    proc = _snakemake(proj, "-n", "--configfile", "twice.yaml", check=False)
    assert proc.returncode != 0
    assert "twice.yaml: key(s) given twice in one mapping: 'datasets.synthetic' at lines 2 and 3" in proc.stdout + proc.stderr
    # a dataset that reads another's feature store (charades_cd -> charades) without that dataset
    (proj / "cd.yaml").write_text("datasets:\n  charades_cd: {variants: [fian]}\n")
    proc = _snakemake(proj, "-n", "--configfile", "cd.yaml", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Building DAG" not in out, out[-2000:]
    assert ("dataset 'charades_cd' reads the feature store of 'charades' (params/datasets/charades_cd.yaml: "
            "dataset.features_from: charades), but 'charades' is not among the config's datasets") in out, out[-2000:]


def test_bad_params_layer_fails_before_any_job(tmp_path: Path) -> None:
    proj = _project(tmp_path)
    (proj / "params/variants/fian.yaml").write_text("model: {hiden: 3}\n")
    proc = _snakemake(proj, "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "fian.yaml" in out and "hiden" in out
    assert not (proj / "data").exists()


def test_lint_is_clean_and_the_conda_env_pins_the_installed_stack(tmp_path: Path) -> None:
    """`snakemake --lint` reports nothing (each rule names workflow/envs/fian.yaml); the env pins
    every dependency of pyproject.toml at the version installed here (what the tests ran with)."""
    import tomllib
    from importlib.metadata import version

    proj = _project(tmp_path)
    proc = _snakemake(proj, "--lint", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Lints for" not in out, out[-3000:]
    env = yaml.safe_load((ROOT / "workflow/envs/fian.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pins = dict(line.split("==") for line in pip)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~ ]", d, maxsplit=1)[0].lower() for d in deps}
    assert names == set(pins), names ^ set(pins)
    for name, pinned in pins.items():
        assert version(name).split("+")[0] == pinned, (name, version(name), pinned)


def test_paper_dry_run_says_first_which_file_to_fetch_by_hand(tmp_path: Path) -> None:
    """TACoS' C3D features are on a share page: the dry run says so before the DAG, naming the file
    and where it goes; once the file is there the note is gone and no download_features job for
    TACoS is planned (the other datasets' downloads still are)."""
    proj = _project(tmp_path)
    proc = _snakemake(proj, "-n", "--configfile", "workflow/config/paper.yaml")
    out = proc.stderr + proc.stdout
    note = "tacos: tall_c3d_features.hdf5 must be fetched BY HAND"
    assert note in out and "data/raw/tacos/features/tall_c3d_features.hdf5" in out, out[:3000]
    assert "rochester.app.box.com" in out
    assert out.index(note) < out.index("Building DAG of jobs")
    assert "activitynet:" not in out.split("Building DAG")[0]  # its files are direct downloads
    (proj / "data/raw/tacos/features").mkdir(parents=True)
    (proj / "data/raw/tacos/features/tall_c3d_features.hdf5").write_bytes(b"")
    again = _snakemake(proj, "-n", "--configfile", "workflow/config/paper.yaml")
    out = again.stderr + again.stdout
    assert note not in out
    planned = re.findall(r"^rule download_features:\n(?:    .*\n)*?    wildcards: dataset=(\w+)", again.stdout, re.M)
    assert sorted(planned) == ["activitynet", "charades"], planned


def test_headline_protocol_comes_from_the_metrics_files(tmp_path) -> None:
    """The demo's headline states the protocol the info files record, not a fixed phrase."""
    import json

    from fian_pipeline.demo import headline_protocol

    def run(v: str, rule: str | None) -> None:
        d = tmp_path / "synthetic" / v
        d.mkdir(parents=True)
        (d / "metrics_test.json").write_text(json.dumps({"mIoU": 0.5}))
        if rule is not None:
            text = {"gt": "hit: IoU > m", "ge": "hit: IoU >= m"}[rule]
            (d / "info_test.json").write_text(json.dumps({"protocol": {"iou_rule": rule, "text": text}}))

    assert headline_protocol(tmp_path, "synthetic", ["fian"], "test") == "no metrics yet"
    run("fian", "gt")
    run("prior", "gt")
    assert headline_protocol(tmp_path, "synthetic", ["fian"], "test") == "hit: IoU > m"
    run("cma", "ge")
    assert headline_protocol(tmp_path, "synthetic", ["fian", "cma"], "test") == (
        "protocols differ between runs: fian: hit: IoU > m; cma: hit: IoU >= m; prior: hit: IoU > m"
    )
    run("old", None)
    assert "old: not recorded" in headline_protocol(tmp_path, "synthetic", ["old"], "test")


def test_features_extract_with_random_weights_needs_no_backbone_file(tmp_path: Path) -> None:
    """`features: extract` with params extract.allow_random_weights (the documented offline fallback)
    plans the extract_fallback job, which reads no data/raw/<d>/backbone.pt; without that param the
    extract job needs the file (issue 19 item 10).  A real Snakemake dry run of each."""
    proj = _project(tmp_path)
    for sub in ("annotations", "videos"):
        (proj / "data/raw/synthetic" / sub).mkdir(parents=True)
    (proj / "extract.yaml").write_text("datasets: {synthetic: {source: local, features: extract, variants: [fian]}}\n")
    syn = proj / "params/datasets/synthetic.yaml"
    layer = yaml.safe_load(syn.read_text())
    layer["extract"] = {**layer.get("extract", {}), "allow_random_weights": True}
    syn.write_text(yaml.safe_dump(layer))
    dry = _snakemake(proj, "-n", "--configfile", "extract.yaml", "--", "data/interim/synthetic/features.h5")
    out = dry.stdout + dry.stderr
    assert re.search(r"^rule extract_fallback:", out, re.M) and not re.search(r"^rule extract:", out, re.M), out[-3000:]
    assert "--videos data/raw/synthetic/videos --out data/interim/synthetic/features.h5" in out and "--weights" not in out
    layer["extract"]["allow_random_weights"] = False
    syn.write_text(yaml.safe_dump(layer))
    missing = _snakemake(proj, "-n", "--configfile", "extract.yaml", "--", "data/interim/synthetic/features.h5", check=False)
    out = missing.stdout + missing.stderr
    assert missing.returncode != 0 and "backbone.pt" in out, out[-3000:]
