"""Table 7's bias checks (issue 17): the derangement of the video-shuffle check, the shuffled split,
the blind model (one option of the one model), and the registry's jobs for both."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from train_helpers import VOCAB, marked_split, tiny_config

from fian.baselines import derangement
from fian.config import ConfigError, load_config
from fian.model.build import build_model

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# the derangement
# --------------------------------------------------------------------------------------------


def test_derangement_by_hand() -> None:
    # two videos: the only derangement is the swap, whatever the seed
    for seed in range(5):
        assert derangement(2, seed).tolist() == [1, 0]
    # three videos: exactly the two 3-cycles, written out by hand; both are drawn
    drawn = {tuple(derangement(3, s).tolist()) for s in range(40)}
    assert drawn == {(1, 2, 0), (2, 0, 1)}
    # four videos: the 9 derangements (D4 = 9), enumerated independently of the code; all of them
    # come up, nothing else does
    d4 = {p for p in itertools.permutations(range(4)) if all(p[i] != i for i in range(4))}
    assert len(d4) == 9
    assert {tuple(derangement(4, s).tolist()) for s in range(400)} == d4


@pytest.mark.parametrize("n", [5, 17, 300])
def test_derangement_is_a_seeded_permutation_without_fixed_point(n: int) -> None:
    p = derangement(n, seed=7)
    assert sorted(p.tolist()) == list(range(n))  # a permutation
    assert all(int(p[i]) != i for i in range(n))  # no video keeps its own
    assert derangement(n, seed=7).tolist() == p.tolist()  # reproducible
    assert derangement(n, seed=8).tolist() != p.tolist()  # the seed matters


@pytest.mark.parametrize("n", [0, 1])
def test_no_derangement_of_fewer_than_two_videos(n: int) -> None:
    with pytest.raises(ValueError, match=f"at least 2 videos, got {n}"):
        derangement(n, 0)


def test_shuffled_split_shows_each_query_the_other_video() -> None:
    split = marked_split(n_videos=5)
    perm = derangement(5, seed=3)
    shuffled = split.with_videos_from(perm)
    # reference: the video tensor itself permuted (row v holds video perm[v]), own index kept
    expected = split.video[torch.as_tensor(perm)]
    got = torch.cat([b.video for b in shuffled.batches(4)])
    own = torch.cat([b.video for b in split.batches(4)])
    for q in range(len(split)):
        v = int(split.video_index[q])
        assert torch.equal(got[q], expected[v]) and not torch.equal(got[q], own[q]), q
    # the query is its own: words, ground truth, duration, records
    for a, b in zip(split.batches(4), shuffled.batches(4), strict=True):
        assert torch.equal(a.words, b.words) and torch.equal(a.gt, b.gt) and torch.equal(a.duration, b.duration)
    assert shuffled.records is split.records
    with pytest.raises(ValueError, match="a permutation of the 5 video rows"):
        split.with_videos_from([0, 0, 1, 2, 3])


# --------------------------------------------------------------------------------------------
# blind FIAN: one option of the one model
# --------------------------------------------------------------------------------------------


def _blind(cfg):
    import dataclasses

    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, video_input="constant"))


@pytest.mark.parametrize("video_input", ["constant", "features"])
def test_blind_model_sees_a_constant_video_in_training_and_evaluation(video_input: str) -> None:
    from fian.losses import build_loss
    from fian.train import fit

    cfg = tiny_config(epochs=1)
    cfg = _blind(cfg) if video_input == "constant" else cfg
    split = marked_split(n_videos=4)
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=VOCAB)
    seen: list[torch.Tensor] = []
    model.video_encoder.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    fit(model, build_loss(cfg), split, split, train_cfg=cfg.train, eval_cfg=cfg.eval,
        num_steps=cfg.features.num_steps, checkpoint=None, device="cpu", progress=False)  # fmt: skip
    assert len(seen) >= 2  # training batches and the validation pass
    constant = all(bool((x == 0).all()) for x in seen)
    assert constant is (video_input == "constant")
    # evaluation: the scores do not depend on what the video holds (and do for the full model)
    model.eval()
    batch = next(split.batches(8))
    with torch.no_grad():
        a = model(batch.video, batch.video_mask, batch.words, batch.word_mask).logits
        b = model(torch.randn_like(batch.video), batch.video_mask, batch.words, batch.word_mask).logits
    assert torch.equal(a, b) is (video_input == "constant")


def test_blind_variant_changes_only_the_video_input() -> None:
    """params/variants/blind.yaml over each shipped dataset: the fian config but model.video_input."""
    from fian.config_diff import compare

    for ds in ("synthetic", "charades", "tacos", "activitynet"):
        layers = [ROOT / "params/base.yaml", ROOT / f"params/datasets/{ds}.yaml"]
        full = load_config(*layers, ROOT / "params/variants/fian.yaml")
        blind = load_config(*layers, ROOT / "params/variants/blind.yaml")
        diff = compare(full.to_dict(), blind.to_dict())
        assert [k for k, *_ in diff.matter] == ["model.video_input"], (ds, diff.matter)
        assert blind.model.video_input == "constant" and full.model.video_input == "features"


def test_bad_video_input_names_the_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "v.yaml"
    bad.write_text("model:\n  video_input: none\n")
    with pytest.raises(ConfigError, match=r"v\.yaml.*model\.video_input"):
        load_config(ROOT / "params/base.yaml", bad)
    neg = tmp_path / "s.yaml"
    neg.write_text("eval:\n  shuffle_seed: -1\n")
    with pytest.raises(ConfigError, match=r"eval\.shuffle_seed"):
        load_config(ROOT / "params/base.yaml", neg)


# --------------------------------------------------------------------------------------------
# the registry: blind's jobs as any variant's, the shuffle jobs for the reference only
# --------------------------------------------------------------------------------------------


def _plan(tmp: Path, **extra):
    from fian_pipeline import registry as R

    spec = {"variants": ["fian", "blind"], "source": "generate", "shuffle": True, **extra.pop("spec", {})}
    return R.plan_from_config({"datasets": {"synthetic": spec}, **extra}, ROOT)


def test_blind_and_shuffle_jobs_single_and_per_seed(tmp_path: Path) -> None:
    from fian_pipeline import registry as R

    ids = [i.id for i in R.instances(_plan(tmp_path))]
    assert {"train@synthetic-blind", "evaluate@synthetic-blind-test", "plots@synthetic-blind-test",
            "shuffle@synthetic-fian-test"} <= set(ids)  # fmt: skip
    assert not [i for i in ids if i.startswith("shuffle@synthetic-blind")]  # the reference only
    (sh,) = [i for i in R.instances(_plan(tmp_path)) if i.stage.name == "shuffle"]
    assert sh.outs() == [f"results/synthetic/fian/shuffled/{f}_test.{e}" for f, e in
                         (("predictions", "jsonl"), ("metrics", "json"), ("info", "json"))]  # fmt: skip
    assert "--shuffle-videos" in sh.command() and "--checkpoint results/synthetic/fian/checkpoint.pt" in sh.command()

    seeded = R.instances(_plan(tmp_path, seeds=[0, 1]))
    ids = [i.id for i in seeded]
    for s in (0, 1):
        assert f"train_seed@synthetic-blind-{s}" in ids and f"shuffle_seed@synthetic-fian-{s}-test" in ids
    assert "aggregate@synthetic-blind-test" in ids and "compare@synthetic-blind-test" in ids
    (agg,) = [i for i in seeded if i.stage.name == "aggregate_shuffle"]
    assert agg.outs() == ["results/synthetic/fian/shuffled/summary_test.json"]
    cmd = agg.command(_plan(tmp_path, seeds=[0, 1]))
    assert ("--metrics results/synthetic/fian/seed0/shuffled/metrics_test.json "
            "results/synthetic/fian/seed1/shuffled/metrics_test.json") in cmd
    (one,) = [i for i in seeded if i.id == "shuffle_seed@synthetic-fian-1-test"]
    assert one.command().endswith("--out results/synthetic/fian/seed1/shuffled --seed 1")
    # the tables read the shuffled summary and name Table 7's datasets
    plan = _plan(tmp_path, seeds=[0, 1])
    assert "results/synthetic/fian/shuffled/summary_test.json" in R.plan_inputs(R.stage("tables"), plan)
    assert R.plan_args(R.stage("tables"), plan)[-4:] == ["--datasets", "synthetic", "--stand-in", "synthetic"]
    # without `shuffle:` no shuffle job
    assert not [i for i in R.instances(_plan(tmp_path, spec={"shuffle": False})) if i.stage.name in R.SHUFFLE_STAGES]


def test_shuffle_without_the_reference_variant_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"datasets\.synthetic\.shuffle: .*'fian'"):
        _plan(tmp_path, spec={"variants": ["blind"]})


def test_shipped_configs_run_the_bias_checks_on_every_dataset() -> None:
    from fian_pipeline import registry as R

    for name in ("default", "paper-mini", "paper"):
        plan = R.plan_from_config(yaml.safe_load((ROOT / f"workflow/config/{name}.yaml").read_text()), ROOT)
        for d in plan.datasets:
            assert "blind" in d.variants and d.shuffle and d.baseline, (name, d.name)


def test_shuffle_perm_is_the_evaluate_stage_one() -> None:
    """The stage's permutation is fian.baselines.derangement of the split's videos, named by id."""
    from fian_pipeline.evaluate import shuffled

    split = marked_split(n_videos=4)
    out, info = shuffled(split, Path("test.h5"), seed=5)
    perm = derangement(4, 5)
    assert info["features_from"] == {f"vid{i}": f"vid{int(j)}" for i, j in enumerate(perm)}
    assert info["seed"] == 5 and info["n_videos"] == 4
    assert torch.equal(out.video_index, torch.as_tensor(perm)[split.video_index])
    one = marked_split(n_videos=1)
    from fian_pipeline.common import StageError

    with pytest.raises(StageError, match=r"one\.h5: cannot shuffle its videos: .*at least 2 videos, got 1"):
        shuffled(one, Path("one.h5"), seed=0)
    np.testing.assert_array_equal(derangement(4, 5), perm)


# --------------------------------------------------------------------------------------------
# Table 7 from hand-written metrics files
# --------------------------------------------------------------------------------------------

GT_RULE = {"iou_rule": "gt", "nms": "per_level", "hit": "IoU > m"}


def _write(path: Path, data: dict) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _run(folder: Path, r15: float, r17: float, r55: float, r57: float, miou: float, shuffle_seed: int | None = None) -> None:
    _write(folder / "metrics_test.json", {"R@1,IoU=0.5": r15, "R@1,IoU=0.7": r17, "R@5,IoU=0.5": r55,
                                          "R@5,IoU=0.7": r57, "mIoU": miou, "n_queries": 10})  # fmt: skip
    info = {"unit": "fraction", "split": "test", "protocol": GT_RULE, "provenance": {"seed": 0, "mlflow": {"run_id": folder.name}}}
    if shuffle_seed is not None:
        info["shuffle"] = {"seed": shuffle_seed, "n_videos": 3, "features_from": {"a": "b", "b": "c", "c": "a"}}
    _write(folder / "info_test.json", info)


def _tex_rows(tex: str) -> dict[tuple[str, str], list[str]]:
    """{(dataset block, row label): cells} from the LaTeX, read independently of the renderer."""
    import re

    rows, block = {}, ""
    for line in tex.split(r"\toprule", 1)[1].split(r"\bottomrule")[0].splitlines():
        head = re.search(r"\\texttt\{([a-z0-9\\_]+)\}", line)
        if line.startswith(r"\multicolumn") and head:
            block = head.group(1).replace("\\_", "_")
        elif line.endswith(r"\\") and not line.startswith((r"\multicolumn", " &", "Method")):
            cells = [c.strip() for c in line[:-2].split("&")]
            rows[(block, cells[0])] = cells[1:]
    return rows


def test_table7_rows_from_hand_written_files(tmp_path: Path) -> None:
    import json

    from fian_pipeline.tables import main as tables_main

    res = tmp_path / "results"
    _run(res / "charades/fian", 0.50, 0.30, 0.90, 0.60, 0.45)
    _run(res / "charades/prior", 0.20, 0.05, 0.60, 0.25, 0.30)
    _run(res / "charades/blind", 0.35, 0.15, 0.80, 0.45, 0.38)
    _run(res / "charades/fian/shuffled", 0.25, 0.10, 0.70, 0.30, 0.33, shuffle_seed=4)
    _run(res / "synthetic/fian", 0.70, 0.68, 0.92, 0.80, 0.64)
    _run(res / "synthetic/prior", 0.11, 0.04, 0.51, 0.20, 0.11)
    # synthetic: no blind run, no shuffled run
    out = tmp_path / "reports"
    assert tables_main(["--results", str(res), "--out", str(out), "--datasets", "charades", "synthetic",
                        "--stand-in", "synthetic"]) == 0  # fmt: skip
    tex = (out / "table7.tex").read_text()
    rows = _tex_rows(tex)
    for line in tex.splitlines():  # every line's braces balance (a stray "}" stops pdflatex)
        assert line.count("{") - line.count(r"\{") == line.count("}") - line.count(r"\}"), line
    # percentages, by hand; bold = best of each column within charades (FIAN everywhere)
    assert rows[("charades", "FIAN (ours)")] == [r"\textbf{50.00}", r"\textbf{30.00}", r"\textbf{90.00}",
                                                 r"\textbf{60.00}", r"\textbf{45.00}"]  # fmt: skip
    assert rows[("charades", "Moment prior (ours)")] == ["20.00", "5.00", "60.00", "25.00", "30.00"]
    assert rows[("charades", "Blind FIAN (ours)")] == ["35.00", "15.00", "80.00", "45.00", "38.00"]
    assert rows[("charades", "FIAN, videos shuffled (ours)")] == ["25.00", "10.00", "70.00", "30.00", "33.00"]
    # the stand-in block: after the real one, under its line, rows named, never bold, '---' not run
    body = tex.split(r"\toprule")[1]
    assert body.index(r"\texttt{charades}") < body.index("Not a reproduction") < body.index(r"\texttt{synthetic}")
    assert rows[("synthetic", "FIAN (ours) on synthetic")] == ["70.00", "68.00", "92.00", "80.00", "64.00"]
    assert rows[("synthetic", "Blind FIAN (ours) on synthetic")] == ["---"] * 5
    assert rows[("synthetic", "FIAN, videos shuffled (ours) on synthetic")] == ["---"] * 5
    # the caption says what each row is, the shuffle seed its runs recorded, the protocol
    for needle in ("Moment prior: a baseline that reads neither query nor video", "Blind FIAN: the same model trained "
                   "and evaluated with every video's features replaced by zeros", "FIAN, videos shuffled: the trained "
                   "FIAN evaluated with each query shown the features of another video", r"\texttt{eval.shuffle\_seed} = 4",
                   "Protocol: hit: IoU $> m$"):  # fmt: skip
        assert needle in tex, needle
    assert "seeds" not in tex.split(r"\caption{")[1].split("}\n")[0].lower() or "n = " not in tex  # one run: no n
    md = (out / "table7.md").read_text()
    assert "| Charades-STA (`charades`) | Blind FIAN (ours) | 35.00 | 15.00 | 80.00 | 45.00 | 38.00 |" in md
    assert md.index("**Not a reproduction") < md.index("FIAN (ours) on synthetic")
    csv = (out / "table7.csv").read_text().splitlines()
    assert 'table7,ours,"FIAN, videos shuffled (ours)",charades,fian/shuffled,0,"R@1,IoU=0.5",25.0' in csv
    assert "table7,stand-in,FIAN (ours),synthetic,fian,0,mIoU,64.0" in csv
    assert len(csv) == 1 + 5 * (4 + 2)  # header + 5 columns x the 6 rows that ran
    prov = json.loads((out / "table7.provenance.json").read_text())
    assert [(r["dataset"], r["variant"], r["run"]) for r in prov["rows"]] == [
        ("charades", "fian", True), ("charades", "prior", True), ("charades", "blind", True),
        ("charades", "fian/shuffled", True), ("synthetic", "fian", True), ("synthetic", "prior", True),
        ("synthetic", "blind", False), ("synthetic", "fian/shuffled", False)]  # fmt: skip
    assert prov["rows"][3]["runs"][0]["evaluate"]["mlflow"]["run_id"] == "shuffled"


def test_table7_with_seeds_prints_mean_std_and_n(tmp_path: Path) -> None:
    import json

    from fian.reports import bias_table

    res = tmp_path / "results"

    def summary(path: Path, r15: dict[int, float]) -> None:
        from fian.reports.stats import summarize

        metrics = {k: summarize({s: v * f for s, v in r15.items()}) for k, f in
                   (("R@1,IoU=0.5", 1.0), ("R@1,IoU=0.7", 0.5), ("R@5,IoU=0.5", 1.5), ("R@5,IoU=0.7", 1.0), ("mIoU", 0.8))}  # fmt: skip
        _write(path, {"unit": "fraction", "split": "test", "n": 2, "seeds": [0, 1], "metrics": metrics,
                      "protocol": GT_RULE, "runs": [{"seed": s} for s in r15]})  # fmt: skip

    summary(res / "tacos/fian/summary_test.json", {0: 0.30, 1: 0.34})
    summary(res / "tacos/blind/summary_test.json", {0: 0.20, 1: 0.21})
    summary(res / "tacos/fian/shuffled/summary_test.json", {0: 0.10, 1: 0.14})
    _run(res / "tacos/prior", 0.12, 0.05, 0.40, 0.20, 0.15)  # one fit whatever the seeds
    files = bias_table.render(res, ["tacos"], seeds=[0, 1], kinds=(".tex", ".csv"))
    rows = _tex_rows(files["table7.tex"])
    pm = r"\,{\scriptsize$\pm$}\,"
    # R@1,IoU=0.5 of the shuffled runs: 10 and 14: mean 12.00, sample std 4 / sqrt(2) = 2.83
    assert rows[("tacos", "FIAN, videos shuffled (ours)")][0] == f"12.00{pm}2.83"
    assert rows[("tacos", "Blind FIAN (ours)")][0] == f"20.50{pm}0.71"  # 20, 21
    assert rows[("tacos", "FIAN (ours)")][0] == rf"\textbf{{32.00{pm}2.83}}"
    assert rows[("tacos", "Moment prior (ours)")][0] == "12.00"
    assert r"$n = 2$ seeds (0, 1)" in files["table7.tex"]
    assert 'table7,ours,Blind FIAN (ours),tacos,blind,1,"R@1,IoU=0.5",21.0' in files["table7.csv"].splitlines()
    # a summary of other seeds is stale: an error naming it
    with pytest.raises(ValueError, match=r"tacos/fian/summary_test\.json: key .seeds."):
        bias_table.render(res, ["tacos"], seeds=[0, 1, 2])
    assert json.loads((res / "tacos/fian/summary_test.json").read_text())["n"] == 2


def test_table7_bad_metrics_file_names_it_and_writes_nothing(tmp_path: Path, capsys) -> None:
    from fian_pipeline.common import run_stage
    from fian_pipeline.tables import main as tables_main

    res = tmp_path / "results"
    _run(res / "charades/fian", 0.5, 0.3, 0.9, 0.6, 0.45)
    _write(res / "charades/fian/shuffled/metrics_test.json", {"R@1,IoU=0.5": 1.5})
    out = tmp_path / "reports"
    code = run_stage(tables_main, ["--results", str(res), "--out", str(out), "--datasets", "charades"])
    assert code == 1 and "charades/fian/shuffled/metrics_test.json" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit) as e:
        tables_main(["--results", str(res), "--out", str(out), "--datasets", "charades", "--stand-in", "synthetic"])
    assert e.value.code == 2 and "--stand-in ['synthetic']: not among the datasets" in capsys.readouterr().err


def test_table7_reports_a_datasets_own_test_splits(tmp_path: Path) -> None:
    """A dataset with test splits of its own (Charades-CD: test_iid, test_ood) is given as
    ``name:split`` (the workflow's tables command does so from dataset.eval_splits): one block per
    split, read from that split's files, named with it; the caption says so."""
    from fian_pipeline.tables import main as tables_main

    res = tmp_path / "results"
    for split, r15 in (("test_iid", 0.60), ("test_ood", 0.20)):
        for run, scale in (("fian", 1.0), ("prior", 0.5), ("blind", 0.75), ("fian/shuffled", 0.25)):
            folder = res / "charades_cd" / run
            _run(folder, r15 * scale, 0.1, 0.9, 0.5, 0.4, shuffle_seed=0 if "shuffled" in run else None)
            for name in ("metrics", "info"):  # _run writes the test split's names: move them to this split
                (folder / f"{name}_test.json").rename(folder / f"{name}_{split}.json")
    out = tmp_path / "reports"
    assert tables_main(["--results", str(res), "--out", str(out), "--datasets", "charades_cd:test_iid",
                        "charades_cd:test_ood"]) == 0  # fmt: skip
    md = (out / "table7.md").read_text()
    # by hand: FIAN 60 / 20, the prior half of it, blind three quarters, shuffled a quarter
    assert "| Charades-CD (`charades_cd`, test_iid) | **FIAN (ours)** |" not in md  # row labels are not bold
    iid = [line for line in md.splitlines() if line.startswith("| Charades-CD (`charades_cd`, test_iid)")]
    ood = [line for line in md.splitlines() if line.startswith("| Charades-CD (`charades_cd`, test_ood)")]
    assert [line.split(" | ")[2] for line in iid] == ["**60.00**", "30.00", "45.00", "15.00"]
    assert [line.split(" | ")[2] for line in ood] == ["**20.00**", "10.00", "15.00", "5.00"]
    assert "test splits of its own" in md
    with pytest.raises(SystemExit):  # a stand-in that is not among the datasets' names
        tables_main(["--results", str(res), "--out", str(out), "--datasets", "charades_cd:test_iid",
                     "--stand-in", "synthetic"])  # fmt: skip
