"""Issue 16: seeds, their aggregation, paired bootstrap intervals and provenance, checked by
independent means (hand computations, an exhaustive bootstrap distribution, scipy.stats.bootstrap)
on hand-written files.  The registry/Snakemake/DVC side: tests/test_render_drift.py; real runs of
two seeds through the stages: tests/test_train.py::test_two_seeds_through_the_stages."""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fian.config import ConfigError
from fian.reports.compare import compare_runs, read_top1
from fian.reports.stats import format_mean_std, paired_bootstrap, summarize, top1_hits
from fian_pipeline import registry as R
from fian_pipeline.common import run_stage
from fian_pipeline.render import load_plan

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GT_RULE = {"iou_rule": "gt", "hit": "IoU > m", "nms": "per_level", "nms_threshold": "0.5"}


# --------------------------------------------------------------------------------------------
# The `seeds:` key
# --------------------------------------------------------------------------------------------


def _config(tmp: Path, seeds: str) -> str:
    (tmp / "workflow/config").mkdir(parents=True)
    shutil.copytree(ROOT / "workflow/schemas", tmp / "workflow/schemas")
    shutil.copytree(ROOT / "params", tmp / "params")
    text = (ROOT / "workflow/config/default.yaml").read_text() + f"seeds: {seeds}\n"
    (tmp / "workflow/config/c.yaml").write_text(text)
    return "workflow/config/c.yaml"


@pytest.mark.parametrize(
    ("seeds", "needle"),
    [
        ("[]", "seeds: the list is empty"),
        ("[0, 1, 0]", "seeds: seed(s) [0] repeated"),
        ("[0, 1.5]", "seeds[1]: 1.5 is not an integer"),
        ("[0, 1.0]", "seeds[1]: 1.0 is not an integer"),  # the JSON schema would take 1.0 for an integer
        ("[zero]", "seeds[0]: 'zero' is not an integer"),
        ("[true]", "seeds[0]: True is not an integer"),
        ("[-1]", "seeds[0]: -1 is negative"),
        ("3", "seeds: expected a list"),
    ],
)
def test_bad_seeds_name_the_config_file_and_key(tmp_path: Path, seeds: str, needle: str) -> None:
    rel = _config(tmp_path, seeds)
    with pytest.raises(ConfigError) as e:
        load_plan(rel, tmp_path)
    assert str(e.value).startswith(str(tmp_path / rel) + ": ") and needle in str(e.value), str(e.value)


def test_snakemake_refuses_bad_seeds_before_any_job(tmp_path: Path) -> None:
    rel = _config(tmp_path, "[0, 0]")
    shutil.copy(ROOT / "Snakefile", tmp_path / "Snakefile")
    proc = subprocess.run([str(BIN / "snakemake"), "-n", "--cores", "1", "--configfile", rel], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"{rel}: seeds: seed(s) [0] repeated" in out, out[-2000:]
    assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()


def test_without_seeds_the_jobs_are_those_of_before() -> None:
    """A config without `seeds:`: train/evaluate/plots per variant, in results/<d>/<v>/ (no seed
    folder, no aggregate or compare job); `seeds: null` is the same."""
    import yaml

    config = yaml.safe_load((ROOT / "workflow/config/default.yaml").read_text())
    plan = R.plan_from_config(config, ROOT)
    ids = [i.id for i in R.instances(plan)]
    assert plan.seeds is None and "train@synthetic-fian" in ids and not [i for i in ids if "seed" in i]
    assert not [i for i in ids if i.startswith(("aggregate", "compare"))]
    assert R.plan_from_config({**config, "seeds": None}, ROOT) == plan
    seeded = R.plan_from_config({**config, "seeds": [3]}, ROOT)
    assert [i.id for i in R.instances(seeded) if i.stage.module == "train"] == [
        "train_seed@synthetic-fian-3", "train_seed@synthetic-blind-3"]  # the demo's variants: fian, blind (Table 7)


# --------------------------------------------------------------------------------------------
# Library: summaries, hits, the bootstrap
# --------------------------------------------------------------------------------------------


def test_summarize_by_hand() -> None:
    s = summarize({2: 0.5, 0: 0.7, 1: 0.6})
    # mean 0.6; sample std: sqrt((0.01 + 0.01 + 0) / (3 - 1)) = 0.1
    assert s["mean"] == pytest.approx(0.6) and s["std"] == pytest.approx(0.1)
    assert (s["min"], s["max"], s["n"]) == (0.5, 0.7, 3)
    assert s["values"] == {"2": 0.5, "0": 0.7, "1": 0.6}  # every seed's value, in the given order
    one = summarize([0.25])
    assert one["std"] is None and one["mean"] == 0.25 and one["n"] == 1
    with pytest.raises(ValueError):
        summarize({})
    assert format_mean_std([61.0, 63.0]) == "62.00 ± 1.41"  # sqrt(2) = 1.414
    assert format_mean_std([61.234]) == "61.23"


def test_top1_hits_by_hand() -> None:
    gt = np.array([[0.0, 10.0]] * 5)
    top1 = np.array([[0.0, 5.0], [0.0, 7.0], [10.0, 20.0], [np.nan, np.nan], [2.0, 10.0]])
    # IoU: 0.5, 0.7, 0.0, none, 0.8
    assert top1_hits(top1, gt, [0.5, 0.7], "gt").tolist() == [[False, False], [True, False], [False, False],
                                                             [False, False], [True, True]]  # fmt: skip
    assert top1_hits(top1, gt, [0.5, 0.7], "ge").tolist() == [[True, False], [True, True], [False, False],
                                                             [False, False], [True, True]]  # fmt: skip


def test_bootstrap_of_a_constant_difference_is_that_constant() -> None:
    ci = paired_bootstrap([0.25] * 7, resamples=1000, level=0.95, seed=0)
    assert (ci.mean, ci.low, ci.high, ci.n, ci.contains_zero) == (0.25, 0.25, 0.25, 7, False)


def test_bootstrap_matches_the_exhaustive_distribution() -> None:
    """Three queries with differences (0, 0, 1): the bootstrap distribution of the mean is the mean of
    each of the 27 equally likely resamples, enumerated by hand; the resampled means follow it."""
    d = [0.0, 0.0, 1.0]
    exact = np.array([np.mean(t) for t in itertools.product(d, repeat=3)])
    # P(mean = 0) = (2/3)^3 = 8/27, P(1/3) = 12/27, P(2/3) = 6/27, P(1) = 1/27
    assert [np.mean(exact == v) for v in (0, 1 / 3, 2 / 3, 1)] == pytest.approx([8 / 27, 12 / 27, 6 / 27, 1 / 27])
    from fian.reports.stats import bootstrap_means

    means = bootstrap_means(np.array(d), resamples=20000, seed=1)
    for v, p in ((0, 8 / 27), (1 / 3, 12 / 27), (2 / 3, 6 / 27), (1, 1 / 27)):
        assert np.mean(np.isclose(means, v)) == pytest.approx(p, abs=0.015)  # 4 sd of a 20000-draw frequency
    ci = paired_bootstrap(d, resamples=20000, level=0.95, seed=1)
    # quantiles of the exact distribution: 2.5 % -> 0 (P(0) = 0.296 > 0.025); 97.5 % -> 1 (P(<= 2/3) = 26/27 = 0.963 < 0.975)
    assert ci.low == 0.0 and ci.high == pytest.approx(1.0) and ci.contains_zero
    assert ci.mean == pytest.approx(1 / 3)


def test_bootstrap_agrees_with_scipy_on_paired_hits() -> None:
    """The interval of a paired difference of R@1 hits (strongly correlated: the ablation flips 10 %
    of the reference's hits) equals scipy.stats.bootstrap's paired percentile interval up to Monte
    Carlo error; an unpaired bootstrap would be far wider."""
    from scipy.stats import bootstrap

    rng = np.random.default_rng(7)
    ref = (rng.random(600) < 0.45).astype(float)
    flip = rng.random(600) < 0.10
    abl = np.where(flip, (rng.random(600) < 0.2).astype(float), ref)
    ci = paired_bootstrap(abl - ref, resamples=20000, level=0.95, seed=3)
    sp = bootstrap((abl, ref), lambda a, b, axis: np.mean(a, axis=axis) - np.mean(b, axis=axis), paired=True,
                   vectorized=True, n_resamples=20000, confidence_level=0.95, method="percentile",
                   rng=np.random.default_rng(11)).confidence_interval  # fmt: skip
    assert ci.mean == pytest.approx(abl.mean() - ref.mean())
    assert ci.low == pytest.approx(sp.low, abs=0.003) and ci.high == pytest.approx(sp.high, abs=0.003)
    unpaired = bootstrap((abl, ref), lambda a, b, axis: np.mean(a, axis=axis) - np.mean(b, axis=axis), paired=False,
                         vectorized=True, n_resamples=2000, method="percentile",
                         rng=np.random.default_rng(0)).confidence_interval  # fmt: skip
    assert ci.high - ci.low < 0.5 * (unpaired.high - unpaired.low)  # pairing removes the queries' own difficulty
    # same seed, same interval; the seed is what makes it reproducible
    assert paired_bootstrap(abl - ref, resamples=20000, level=0.95, seed=3) == ci


# --------------------------------------------------------------------------------------------
# compare: predictions files of several seeds, pooled
# --------------------------------------------------------------------------------------------


def _predictions(path: Path, top1: list, gt: list | None = None, order: list[int] | None = None) -> Path:
    gt = gt or [[0.0, 10.0]] * len(top1)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in order or range(len(top1)):
        seg = top1[i]
        rows.append(json.dumps({"index": i, "video_id": f"v{i}", "sentence": "s", "gt": gt[i], "duration": 20.0,
                                "segments": [seg, [15.0, 20.0]] if seg else [], "scores": [0.9, 0.1][: 2 if seg else 0],
                                "some_future_field": {"0.5": [[1, 2]]}}))  # fmt: skip
    path.write_text("\n".join(rows) + "\n")
    return path


def _info(path: Path, seed: int, protocol: dict = GT_RULE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"unit": "fraction", "split": "test", "protocol": protocol,
                                "provenance": {"seed": seed, "mlflow": {"run_id": f"eval{seed}"}}}))  # fmt: skip
    return path


HIT, HALF, MISS = [0.0, 9.0], [0.0, 6.0], [12.0, 20.0]  # IoU with [0, 10]: 0.9, 0.6, 0


def test_compare_pools_seeds_per_query_by_hand(tmp_path: Path) -> None:
    # 4 queries, 2 seeds each; IoU with the ground truth [0, 10]: HIT 0.9, HALF 0.6, MISS 0, None: no prediction
    v0 = _predictions(tmp_path / "v0.jsonl", [HIT, HALF, MISS, MISS])
    v1 = _predictions(tmp_path / "v1.jsonl", [HIT, MISS, None, MISS], order=[3, 1, 0, 2])  # any line order
    r0 = _predictions(tmp_path / "r0.jsonl", [HIT, HIT, HALF, MISS])
    r1 = _predictions(tmp_path / "r1.jsonl", [HALF, HIT, HIT, HIT])
    out = compare_runs([v0, v1], [r0, r1], metrics=["R@1,IoU=0.5", "R@1,IoU=0.7"], iou_rule="gt", resamples=2000,
                       level=0.95, seed=0)  # fmt: skip
    m5, m7 = out["metrics"]["R@1,IoU=0.5"], out["metrics"]["R@1,IoU=0.7"]
    # IoU 0.5: variant (1,1,0,0) and (1,0,0,0) -> per query (1, .5, 0, 0); reference (1,1,1,0) and
    # (1,1,1,1) -> (1, 1, 1, .5); per-query differences (0, -.5, -1, -.5)
    assert m5["variant"] == pytest.approx(0.375) and m5["reference"] == pytest.approx(0.875)
    assert m5["difference"] == pytest.approx(-0.5)
    same = paired_bootstrap([0, -0.5, -1, -0.5], resamples=2000, level=0.95, seed=0)  # the same draws
    assert (m5["low"], m5["high"], m5["contains_zero"]) == (same.low, same.high, same.contains_zero)
    # IoU 0.7 (only HIT): variant (1,0,0,0) twice -> (1,0,0,0); reference (1,1,0,0) and (0,1,1,1) -> (.5,1,.5,.5)
    assert m7["variant"] == pytest.approx(1 / 4) and m7["reference"] == pytest.approx(2.5 / 4)
    assert m7["difference"] == pytest.approx(-0.375)
    assert out["n_queries"] == 4 and out["n_runs"] == 2 and out["bootstrap"]["resamples"] == 2000
    # the hit rule matters at IoU exactly 0.5... (HALF is 0.6: no change); ge vs gt on an exact 0.5
    exact = _predictions(tmp_path / "e.jsonl", [[0.0, 5.0]] * 4)
    gt_rule = compare_runs([exact], [exact], metrics=["R@1,IoU=0.5"], iou_rule="gt", resamples=1000, level=0.95, seed=0)
    ge_rule = compare_runs([exact], [exact], metrics=["R@1,IoU=0.5"], iou_rule="ge", resamples=1000, level=0.95, seed=0)
    assert gt_rule["metrics"]["R@1,IoU=0.5"]["variant"] == 0.0 and ge_rule["metrics"]["R@1,IoU=0.5"]["variant"] == 1.0


def test_compare_refuses_other_queries_and_bad_lines(tmp_path: Path) -> None:
    a = _predictions(tmp_path / "a.jsonl", [HIT, HIT, MISS])
    fewer = _predictions(tmp_path / "fewer.jsonl", [HIT, HIT])
    moved = _predictions(tmp_path / "moved.jsonl", [HIT, HIT, MISS], gt=[[0.0, 10.0], [0.0, 11.0], [0.0, 10.0]])
    kw = {"metrics": ["R@1,IoU=0.5"], "iou_rule": "gt", "resamples": 1000, "level": 0.95, "seed": 0}
    with pytest.raises(ValueError, match=re.escape(f"{fewer}: not the same queries")):
        compare_runs([a], [fewer], **kw)
    with pytest.raises(ValueError, match=re.escape(f"{moved}: query 1 has ground truth [0.0, 11.0]")):
        compare_runs([a], [moved], **kw)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"index": 0, "gt": [0, 1], "segments": [[0, 1]]}\n{"index": 1}\n')
    with pytest.raises(ValueError, match=re.escape(f"{bad}: line 2:")):
        read_top1(bad)
    with pytest.raises(ValueError, match="only R@1"):
        compare_runs([a], [a], **{**kw, "metrics": ["R@5,IoU=0.5"]})


def test_compare_stage_writes_the_interval_and_refuses_mismatches(tmp_path: Path, capsys) -> None:
    from fian_pipeline.compare import main

    v = [_predictions(tmp_path / f"v{s}/p.jsonl", [HIT, MISS, MISS, HIT] * 10) for s in (0, 1)]
    r = [_predictions(tmp_path / f"r{s}/p.jsonl", [HIT, HIT, MISS, HIT] * 10) for s in (0, 1)]
    vi = [_info(tmp_path / f"v{s}/info.json", s) for s in (0, 1)]
    ri = [_info(tmp_path / f"r{s}/info.json", s) for s in (0, 1)]
    out = tmp_path / "compare_fian_test.json"

    def args(v_info=vi, r_info=ri, extra=()):  # noqa: ANN001, ANN202
        return ["--predictions", *map(str, v), "--info", *map(str, v_info), "--reference", *map(str, r),
                "--reference-info", *map(str, r_info), "--out", str(out), *extra]  # fmt: skip

    assert run_stage(main, args()) == 0
    res = json.loads(out.read_text())
    m = res["metrics"]["R@1,IoU=0.5"]
    assert m["difference"] == pytest.approx(-0.25) and m["high"] < 0 and not m["contains_zero"]
    assert res["seeds"] == [0, 1] and res["bootstrap"] == {**res["bootstrap"], "resamples": 2000, "level": 0.95, "seed": 0}
    assert "difference -25.00" in capsys.readouterr().out
    out.unlink()
    ge = [_info(tmp_path / "ge/info.json", 1, {**GT_RULE, "iou_rule": "ge"}), vi[0]]
    assert run_stage(main, args(v_info=[vi[0], ge[0]])) == 1
    assert "different hit rules" in capsys.readouterr().err and not out.exists()
    assert run_stage(main, args(r_info=[ri[1], ri[0]])) == 1  # seeds in another order
    assert "seed 0, but its reference" in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit) as e:
        main(args(extra=("--resamples", "500")))
    assert e.value.code == 2 and not out.exists()


# --------------------------------------------------------------------------------------------
# aggregate: one summary of a variant's seeds
# --------------------------------------------------------------------------------------------


def _run(tmp: Path, seed: int, r1: float, *, eval_seed: int | None = None, protocol: dict = GT_RULE) -> list[Path]:
    run = tmp / f"seed{seed}"
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics_test.json").write_text(json.dumps({"R@1,IoU=0.5": r1, "R@1,IoU=0.7": r1 / 2, "mIoU": 0.4,
                                                       "n_queries": 10}))  # fmt: skip
    _info(run / "info_test.json", seed if eval_seed is None else eval_seed, protocol)
    (run / "train_info.json").write_text(json.dumps({"unit": "fraction", "provenance": {
        "seed": seed, "mlflow": {"run_id": f"train{seed}"}, "git_commit": "abc", "git_dirty": "false",
        "device": {"kind": "cuda", "name": "H100", "count": 2}, "batch_size": {"effective": 64, "per_device": 32},
        "inputs_sha256": {"train.h5": "f" * 64}}}))  # fmt: skip
    return [run / "metrics_test.json", run / "info_test.json", run / "train_info.json"]


def _aggregate_args(runs: list[list[Path]], out: Path) -> list[str]:
    return ["--metrics", *(str(r[0]) for r in runs), "--info", *(str(r[1]) for r in runs),
            "--train-info", *(str(r[2]) for r in runs), "--out", str(out)]  # fmt: skip


def test_aggregate_summarizes_every_seed(tmp_path: Path) -> None:
    from fian_pipeline.aggregate import main

    runs = [_run(tmp_path, s, v) for s, v in ((0, 0.30), (1, 0.34), (2, 0.35))]
    out = tmp_path / "summary_test.json"
    assert run_stage(main, _aggregate_args(runs, out)) == 0
    s = json.loads(out.read_text())
    m = s["metrics"]["R@1,IoU=0.5"]
    # mean 0.33; deviations -0.03, 0.01, 0.02: sample variance (9 + 1 + 4)e-4 / 2 = 7e-4
    assert m["mean"] == pytest.approx(0.33) and m["std"] == pytest.approx(math.sqrt(7e-4))
    assert (m["min"], m["max"], m["n"], m["values"]) == (0.30, 0.35, 3, {"0": 0.30, "1": 0.34, "2": 0.35})
    assert s["seeds"] == [0, 1, 2] and s["n"] == 3 and s["protocol"] == GT_RULE and "n_queries" not in s["metrics"]
    assert [r["train"]["mlflow"]["run_id"] for r in s["runs"]] == ["train0", "train1", "train2"]
    assert s["runs"][1]["evaluate"]["mlflow"]["run_id"] == "eval1"


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("repeated", "seed 0 given twice"),
        ("other_eval_seed", "evaluates a model of seed 5"),
        ("protocol", "protocol"),
        ("count", "one --metrics, --info and --train-info file per seed"),
    ],
)
def test_aggregate_refuses_mixed_runs_and_writes_nothing(tmp_path: Path, case: str, needle: str, capsys) -> None:
    from fian_pipeline.aggregate import main

    a = _run(tmp_path / "a", 0, 0.3)
    b = {
        "repeated": lambda: _run(tmp_path / "b", 0, 0.4),
        "other_eval_seed": lambda: _run(tmp_path / "b", 1, 0.4, eval_seed=5),
        "protocol": lambda: _run(tmp_path / "b", 1, 0.4, protocol={**GT_RULE, "iou_rule": "ge"}),
        "count": lambda: _run(tmp_path / "b", 1, 0.4)[:2],
    }[case]()
    out = tmp_path / "summary_test.json"
    args = _aggregate_args([a, b], out) if case != "count" else [
        "--metrics", str(a[0]), str(b[0]), "--info", str(a[1]), str(b[1]), "--train-info", str(a[2]), "--out", str(out)]  # fmt: skip
    assert run_stage(main, args) == 1
    assert needle in capsys.readouterr().err and not out.exists()


# --------------------------------------------------------------------------------------------
# tables from summaries and comparisons
# --------------------------------------------------------------------------------------------


def _summary(path: Path, values: dict[int, float], protocol: dict = GT_RULE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics = {f"R@{n},IoU={m}": summarize({s: v * (1 - m) / n**0.1 for s, v in values.items()})
               for n in (1, 5) for m in (0.1, 0.3, 0.5, 0.7)}  # fmt: skip
    path.write_text(json.dumps({"unit": "fraction", "split": "test", "n": len(values), "seeds": list(values),
                                "metrics": metrics, "protocol": protocol,
                                "runs": [{"seed": s, "train": {"seed": s, "mlflow": {"run_id": f"t{s}"}}} for s in values]}))  # fmt: skip


def _comparison(path: Path, d5: tuple[float, float, float], d7: tuple[float, float, float]) -> None:
    metrics = {name: {"variant": 0.2, "reference": 0.2 - d[0], "difference": d[0], "low": d[1], "high": d[2],
                      "contains_zero": d[1] <= 0 <= d[2]} for name, d in (("R@1,IoU=0.5", d5), ("R@1,IoU=0.7", d7))}  # fmt: skip
    path.write_text(json.dumps({"unit": "fraction", "n_queries": 4001, "n_runs": 2, "iou_rule": "gt", "metrics": metrics,
                                "bootstrap": {"resamples": 2000, "level": 0.95, "seed": 0}}))  # fmt: skip


def _rows(tex: str, block: int = 0) -> dict[str, list[str]]:
    body = tex.split(r"\begin{tabular}")[1 + block].split(r"\midrule", 1)[1].split(r"\bottomrule")[0]
    return {c[0]: c[1:] for c in ([x.strip() for x in line[:-2].split("&")] for line in body.splitlines()
                                  if line.endswith(r"\\"))}  # fmt: skip


def test_tables_print_mean_std_paired_block_csv_and_provenance(tmp_path: Path) -> None:
    from fian.reports.tables import KINDS, render_all

    res = tmp_path / "results"
    _summary(res / "tacos/fian/summary_test.json", {0: 0.50, 1: 0.54})
    _summary(res / "tacos/soft/summary_test.json", {0: 0.40, 1: 0.41})
    _summary(res / "tacos/cma/summary_test.json", {0: 0.50, 1: 0.52})
    _comparison(res / "tacos/soft/compare_fian_test.json", (-0.0850, -0.1100, -0.0600), (-0.02, -0.05, 0.01))
    _comparison(res / "tacos/cma/compare_fian_test.json", (-0.0100, -0.0300, 0.0100), (0.003, -0.01, 0.02))
    files = render_all(res, seeds=[0, 1], kinds=KINDS)
    t4 = files["table4.tex"]
    rows = _rows(t4)
    # R@1,IoU=0.1 of soft: 100 * v * 0.9 = 36.0 and 36.9: mean 36.45, sample std 0.9 / sqrt(2) = 0.6364
    assert rows["FIAN-Soft (ours)"][0] == r"36.45\,{\scriptsize$\pm$}\,0.64"
    assert rows["FIAN (ours)"][0] == r"\textbf{46.80\,{\scriptsize$\pm$}\,2.55}"  # 45.0, 48.6: sd 3.6 / sqrt(2); beats 39.55
    assert rows["FIAN-VQ (ours)"] == ["---"] * 6  # not run
    assert r"sample standard deviation over $n = 2$ seeds (0, 1)" in t4
    paired = _rows(t4, block=1)
    # soft: -8.50 [-11.00, -6.00], paper -6.94 (21.64 - 28.58): sign reproduced; IoU=0.7: no paper column
    assert paired["FIAN-Soft (ours)"] == ["$-8.50$ [$-11.00$, $-6.00$]", "$-6.94$", "yes",
                                          r"$-2.00$ [$-5.00$, $+1.00$]$^\dagger$", "-", "-"]  # fmt: skip
    assert paired["FIAN-CMA (ours)"][:3] == [r"$-1.00$ [$-3.00$, $+1.00$]$^\dagger$", "$-5.53$", "yes"]
    assert "FIAN (ours)" not in paired  # the reference itself
    assert "2000 resamples" in t4 and "4001 queries" in t4 and r"\texttt{table4.provenance.json}" in t4
    # table 6: the 1/8 theta_k row is FIAN itself (the reference); no stride variant ran: no paired block
    assert files["table6.tex"].count(r"\begin{tabular}") == 1 and "Paired intervals against FIAN" not in files["table6.tex"]
    # the Markdown twin
    md = files["table4.md"]
    assert "| FIAN-Soft (ours) | 36.45 ± 0.64 |" in md
    assert "| FIAN-Soft (ours) | −8.50 [−11.00, −6.00] | −6.94 | yes | −2.00 [−5.00, +1.00]† | - | - |" in md
    # the CSV: every seed's value, the paper's rows kept apart
    lines = files["table4.csv"].splitlines()
    assert lines[0] == "table,block,row,dataset,variant,seed,metric,value_percent"
    assert "table4,ours,FIAN-Soft (ours),tacos,soft,1,\"R@1,IoU=0.1\",36.9" in lines
    assert "table4,ours,FIAN-Soft (ours),tacos,soft,0,\"R@1,IoU=0.1\",36.0" in lines
    assert "table4,paper,FIAN-Soft,tacos,,,\"R@1,IoU=0.1\",34.97" in lines
    # provenance: per row, its runs
    prov = json.loads(files["table4.provenance.json"])
    soft = next(r for r in prov["rows"] if r["variant"] == "soft")
    assert soft["seeds"] == [0, 1] and [r["train"]["mlflow"]["run_id"] for r in soft["runs"]] == ["t0", "t1"]
    assert soft["file"].endswith("tacos/soft/summary_test.json") and soft["comparison_file"].endswith("compare_fian_test.json")
    assert not next(r for r in prov["rows"] if r["variant"] == "vq")["run"]


def test_a_stale_summary_is_an_error_naming_it(tmp_path: Path) -> None:
    from fian_pipeline.tables import main

    res = tmp_path / "results"
    _summary(res / "tacos/fian/summary_test.json", {0: 0.5, 1: 0.5})
    out = tmp_path / "reports"
    assert run_stage(main, ["--results", str(res), "--out", str(out), "--seeds", "0", "1", "2"]) == 1
    assert not out.exists()
    with pytest.raises(ValueError, match=re.escape(str(res / "tacos/fian/summary_test.json")) + ".*seeds"):
        from fian.reports.tables import render_all

        render_all(res, seeds=[0, 1, 2])


def test_single_run_tables_carry_the_runs_provenance(tmp_path: Path) -> None:
    """Without seeds: the provenance comes from the run's train_info.json and info_<split>.json."""
    from fian.reports.tables import render_all

    run = tmp_path / "tacos/fian"
    _run(tmp_path / "tacos/fian_runs", 0, 0.3)
    run.mkdir(parents=True)
    for f in ("metrics_test.json", "info_test.json", "train_info.json"):
        shutil.copy(tmp_path / "tacos/fian_runs/seed0" / f, run / f)
    prov = json.loads(render_all(tmp_path, kinds=(".provenance.json",))["table2.provenance.json"])
    fian = next(r for r in prov["rows"] if r["variant"] == "fian")
    assert fian["n"] == 1 and fian["seeds"] == [0] and fian["protocol"] == GT_RULE
    (one,) = fian["runs"]
    assert one["train"]["device"] == {"kind": "cuda", "name": "H100", "count": 2}
    assert one["train"]["batch_size"]["effective"] == 64 and one["evaluate"]["mlflow"]["run_id"] == "eval0"
