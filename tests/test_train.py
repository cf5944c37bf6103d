"""The training loop: exact resume, non-finite loss, checkpoints, the train stage."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from train_helpers import VOCAB, marked_split, plain_scores, tiny_config, write_tiny_data

from fian.losses import build_loss
from fian.model.build import build_model
from fian.train import NonFiniteLossError, build_model_from_checkpoint, fit, load_checkpoint


def _fit(cfg, split, ckpt, *, resume=False, val=None, model=None):
    torch.manual_seed(0)
    model = model or build_model(cfg, vocab_size=VOCAB)
    history = fit(
        model, build_loss(cfg), split, val, train_cfg=cfg.train, eval_cfg=cfg.eval,
        num_steps=cfg.features.num_steps, checkpoint=ckpt, resume=resume, config=cfg.to_dict(),
        device="cpu", progress=False,
    )  # fmt: skip
    return model, history


def test_resume_continues_exactly(tmp_path) -> None:
    """2 epochs straight == 1 epoch, stop, resume for 1 more (dropout on: RNG state restored)."""
    split = marked_split(n_videos=6)  # 12 queries, batch 8: a short last batch too
    cfg2 = tiny_config(epochs=2)
    import dataclasses

    cfg2 = dataclasses.replace(cfg2, model=dataclasses.replace(cfg2.model, dropout=0.2))
    cfg1 = dataclasses.replace(cfg2, train=dataclasses.replace(cfg2.train, epochs=1))

    _, straight = _fit(cfg2, split, tmp_path / "a.pt")
    _fit(cfg1, split, tmp_path / "b.pt")
    # the stored config says epochs=1: raising only train.epochs continues the run
    _, resumed = _fit(cfg2, split, tmp_path / "b.pt", resume=True)

    a, b = load_checkpoint(tmp_path / "a.pt"), load_checkpoint(tmp_path / "b.pt")
    assert a["epoch"] == b["epoch"] == 2
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert [r["loss"] for r in straight] == [r["loss"] for r in resumed]
    # Adam moments too
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)


def test_resume_refuses_a_changed_config(tmp_path) -> None:
    split = marked_split(n_videos=2)
    cfg = tiny_config(epochs=1)
    _fit(cfg, split, tmp_path / "c.pt")
    other = tiny_config(epochs=2, lr=1e-3)
    with pytest.raises(ValueError, match=r"c\.pt: cannot resume, the config changed: train\.lr: 0\.003 -> 0\.001$"):
        _fit(other, split, tmp_path / "c.pt", resume=True)  # train.epochs differs too: not listed, allowed
    _fit(tiny_config(epochs=2), split, tmp_path / "d.pt")
    with pytest.raises(ValueError, match=r"d\.pt: cannot resume, it holds 2 epochs but train\.epochs=1"):
        _fit(cfg, split, tmp_path / "d.pt", resume=True)


def test_checkpoint_carries_config_and_rebuilds_model(tmp_path) -> None:
    split = marked_split(n_videos=4)
    cfg = tiny_config(epochs=2)
    model, history = _fit(cfg, split, tmp_path / "m.pt", val=split)
    ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt["config"] == cfg.to_dict()
    assert ckpt["best_epoch"] == history[-1]["best_epoch"]
    rebuilt, rcfg = build_model_from_checkpoint(ckpt, vocab_size=VOCAB)
    assert rcfg == cfg
    batch = next(split.batches(8))
    model.eval(), rebuilt.eval()
    with torch.no_grad():
        a = model(batch.video, batch.video_mask, batch.words, batch.word_mask)
        b = rebuilt(batch.video, batch.video_mask, batch.words, batch.word_mask)
    assert torch.equal(a.logits, b.logits)  # fit left the best weights in the model, as stored


def test_bad_checkpoint_file_is_named(tmp_path) -> None:
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="broken.pt: not a readable checkpoint"):
        load_checkpoint(bad)
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: not a fian checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


class _NaNOnVideo(torch.nn.Module):
    """Wraps a model; turns the logits of any batch containing ``bad_row`` into NaN."""

    def __init__(self, model: torch.nn.Module, split, bad_row: int) -> None:
        super().__init__()
        self.model, self.marker = model, split.video[split.video_index[bad_row]].clone()

    def forward(self, video, video_mask, words, word_mask):
        out = self.model(video, video_mask, words, word_mask)
        hit = (video == self.marker).flatten(1).all(1)  # [B] rows showing the bad video
        if hit.any():
            out.logits = torch.where(hit[:, None], torch.nan, out.logits)
        return out


@pytest.mark.parametrize("loss_checks", [False, True])
def test_nonfinite_loss_names_the_batch(tmp_path, loss_checks: bool) -> None:
    """NaN in the batch holding video 'vid3' stops training with its rows, ids and the loss term."""
    split = marked_split(n_videos=6)
    cfg = tiny_config(epochs=1, batch_size=4, sync_every=2)
    model = _NaNOnVideo(build_model(cfg, vocab_size=VOCAB), split, bad_row=6)  # rows 6, 7 are vid3
    loss_fn = build_loss(cfg)
    loss_fn.check_finite = loss_checks  # the loss's own per-step check, or fit's deferred one
    with pytest.raises(NonFiniteLossError) as err:
        fit(model, loss_fn, split, None, train_cfg=cfg.train, eval_cfg=cfg.eval,
            num_steps=cfg.features.num_steps, checkpoint=tmp_path / "n.pt", device="cpu", progress=False)  # fmt: skip
    msg = str(err.value)
    assert "epoch 1" in msg and "align" in msg and "vid3" in msg, msg
    # the named step is the first batch that holds row 6 or 7
    from fian.distributed import DistInfo, shard_epoch
    from fian.train import epoch_permutation

    order, bs, _ = shard_epoch(epoch_permutation(len(split), cfg.train.seed, 0), 4, DistInfo())
    step = next(i for i in range(0, len(order), bs) if {6, 7} & set(order[i : i + bs].tolist())) // bs
    assert f"step {step + 1}/" in msg, msg
    assert not (tmp_path / "n.pt").exists()  # nothing written for the failed epoch


def test_infinite_lr_is_caught(tmp_path) -> None:
    split = marked_split(n_videos=6)
    cfg = tiny_config(epochs=1, batch_size=4, lr=1e30, grad_clip=0.0)
    model = build_model(cfg, vocab_size=VOCAB)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.mul_(1e20)  # with lr 1e30 the first Adam step blows the weights up
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at epoch 1, step \d+/3 .*video ids"):
        fit(model, build_loss(cfg), split, None, train_cfg=cfg.train, eval_cfg=cfg.eval,
            num_steps=cfg.features.num_steps, checkpoint=None, device="cpu", progress=False)  # fmt: skip


# --------------------------------------------------------------------------------------------
# the train stage end to end (tiny files), then evaluate and baseline stages on its outputs
# --------------------------------------------------------------------------------------------


def _write_params(tmp_path, cfg) -> list[str]:
    import yaml

    def plain(o):
        if isinstance(o, dict):
            return {k: plain(v) for k, v in o.items()}
        if isinstance(o, list | tuple):
            return [plain(v) for v in o]
        return o

    d = cfg.to_dict()
    d.pop("variant")
    base = tmp_path / "params" / "base.yaml"
    base.parent.mkdir()
    base.write_text(yaml.safe_dump(plain(d)))
    ds = tmp_path / "params" / "tiny.yaml"
    ds.write_text("{}\n")
    var = tmp_path / "params" / "fian.yaml"
    var.write_text("{}\n")
    return [str(base), str(ds), str(var)]


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stage")
    data, text = write_tiny_data(tmp, n_train=6, n_val=3, n_test=3)
    params = _write_params(tmp, tiny_config(epochs=2))
    return tmp, params, data, text


def test_train_evaluate_baseline_stages(tiny_files, capsys) -> None:
    from fian_pipeline import baseline, evaluate, train
    from fian_pipeline.common import duration

    tmp, params, data, text = tiny_files
    out = tmp / "results"
    assert train.main(["--params", *params, "--data", str(data), "--text", str(text), "--out", str(out)]) == 0
    hist = pd.read_csv(out / "history.csv")
    assert list(hist["epoch"]) == [1, 2] and {"loss", "align", "boundary", "val/R@1,IoU=0.5", "time_s"} <= set(hist)
    # the console: per epoch its wall time (history's time_s) and the ETA: 1 epoch left x epoch 1's time
    console = [x for x in capsys.readouterr().out.splitlines() if "] epoch " in x]
    t1, t2 = (duration(t) for t in hist["time_s"])
    assert console[0].endswith(f"| epoch {t1} (train + val) | ETA {t1} (1 epoch left)"), console
    assert console[1].endswith(f"| epoch {t2} (train + val) | last epoch"), console
    tm = json.loads((out / "train_metrics.json").read_text())
    assert tm["best_epoch"] in (1, 2) and 0 <= tm["val/R@1,IoU=0.5"] <= 1
    assert not [k for k, v in tm.items() if isinstance(v, str)]  # DVC metrics: numbers only
    assert json.loads((out / "train_info.json").read_text())["unit"] == "fraction"
    # wall-clock time changes on every run: not among DVC's metrics (dvc metrics diff), in the info file
    assert not [k for k in tm if "time" in k] and json.loads((out / "train_info.json").read_text())["train_time_s"] > 0
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 2

    args = ["--params", *params, "--data", str(data), "--text", str(text), "--checkpoint", str(out / "checkpoint.pt")]
    assert evaluate.main([*args, "--split", "test", "--out", str(out)]) == 0
    m = json.loads((out / "metrics_test.json").read_text())
    assert m["n_queries"] == 6 and 0 <= m["R@1,IoU=0.5"] <= 1 and "mIoU" in m
    assert not [k for k, v in m.items() if isinstance(v, str)]  # DVC metrics: numbers only
    info = json.loads((out / "info_test.json").read_text())
    assert {k: info[k] for k in ("unit", "split")} == {"unit": "fraction", "split": "test"}
    assert info["protocol"]["hit"] == "IoU > m"  # the params' default protocol, in words
    lines = (out / "predictions_test.jsonl").read_text().splitlines()
    assert len(lines) == 6
    rec = json.loads(lines[0])
    assert rec["video_id"] == "vid0" and len(rec["segments"]) == len(rec["scores"]) >= 5
    assert all(0 <= s <= e <= rec["duration"] for s, e in rec["segments"])
    assert rec["scores"] == sorted(rec["scores"], reverse=True)

    # every number of the metrics file, recomputed from the predictions file alone (issue 20):
    # under the default protocol (per-level NMS) and under --set eval.nms=fixed eval.iou_rule=ge
    def reproduced(folder):
        reported = json.loads((folder / "metrics_test.json").read_text())
        names = [k for k in reported if k.startswith("R@") or k == "mIoU"]
        assert len(names) == 9
        return plain_scores(folder / "predictions_test.jsonl", names) == {k: reported[k] for k in names}

    assert reproduced(out) and "by_level" in rec and rec["iou_rule"] == "gt"
    fixed_out = tmp / "fixed"
    assert evaluate.main([*args, "--split", "test", "--out", str(fixed_out), "--set", "eval.nms=fixed",
                          "--set", "eval.iou_rule=ge"]) == 0  # fmt: skip
    assert reproduced(fixed_out)

    prior_out = tmp / "prior"
    assert baseline.main(["--params", *params[:2], "--data", str(data), "--split", "test", "--out", str(prior_out)]) == 0
    pm = json.loads((prior_out / "metrics_test.json").read_text())
    assert json.loads((prior_out / "info_test.json").read_text())["baseline"] == "moment_prior" and pm["n_queries"] == 6
    first = [json.loads(x)["segments"] for x in (prior_out / "predictions_test.jsonl").read_text().splitlines()]
    assert all(f == first[0] for f in first)  # query-blind: same moments (equal durations)
    assert reproduced(prior_out)

    # resume after the last epoch: nothing more to do, outputs unchanged
    assert train.main(["--params", *params, "--data", str(data), "--text", str(text), "--out", str(out), "--resume"]) == 0
    assert list(pd.read_csv(out / "history.csv")["epoch"]) == [1, 2]


def test_train_stage_bad_inputs(tiny_files, tmp_path, capsys) -> None:
    from fian_pipeline import evaluate, train
    from fian_pipeline.common import run_stage

    tmp, params, data, text = tiny_files
    out = tmp_path / "out"
    # missing split file
    code = run_stage(train.main, ["--params", *params, "--data", str(tmp_path), "--text", str(text), "--out", str(out)])
    assert code == 1 and "train.h5" in capsys.readouterr().err
    # a split of the wrong number of steps
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    import dataclasses

    cfg = dataclasses.replace(tiny_config(), features=dataclasses.replace(tiny_config().features, num_steps=16),
                              model=dataclasses.replace(tiny_config().model, window_sizes=(4, 8)))  # fmt: skip
    p2 = _write_params(wrong, cfg)
    code = run_stage(train.main, ["--params", *p2, "--data", str(data), "--text", str(text), "--out", str(out)])
    assert code == 1 and "train.h5: num_steps=32 but features.num_steps=16" in capsys.readouterr().err
    assert not out.exists()
    # a truncated checkpoint
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x02garbage")
    code = run_stage(evaluate.main, ["--params", *params, "--data", str(data), "--text", str(text),
                                     "--checkpoint", str(bad), "--split", "test", "--out", str(out)])  # fmt: skip
    assert code == 1 and "bad.pt: not a readable checkpoint" in capsys.readouterr().err
    assert not out.exists()


def test_summary_line_and_history_fields(caplog) -> None:
    split = marked_split(n_videos=2)
    cfg = tiny_config(epochs=1)
    with caplog.at_level("INFO", logger="fian.train"):
        _, history = _fit(cfg, split, None, val=split)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch")]
    assert len(lines) == 1
    assert "loss" in lines[0] and "R@1,IoU=0.5" in lines[0] and "R@1,IoU=0.7" in lines[0] and "mIoU" in lines[0]
    assert all(math.isfinite(history[0][k]) for k in ("loss", "align", "boundary", "time_s"))


def test_train_stage_is_seeded(tiny_files, tmp_path) -> None:
    """Two runs of the stage with the same params give the same weights (initialisation included)."""
    from fian_pipeline import train

    _, params, data, text = tiny_files
    states = []
    for run in ("a", "b"):
        out = tmp_path / run
        assert train.main(["--params", *params, "--data", str(data), "--text", str(text), "--out", str(out)]) == 0
        states.append(load_checkpoint(out / "checkpoint.pt")["model"])
    assert states[0].keys() == states[1].keys()
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


@pytest.mark.parametrize("freeze", [True, False])
def test_word_vectors_train_only_when_not_frozen_and_the_checkpoint_keeps_them(tmp_path, freeze) -> None:
    import dataclasses

    cfg = tiny_config(epochs=1)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, freeze_embeddings=freeze))
    glove = torch.randn(VOCAB, cfg.text.word_dim)
    glove[0] = 0  # padding row
    torch.manual_seed(0)
    model = build_model(cfg, glove.clone())
    _fit(cfg, marked_split(n_videos=6), tmp_path / "e.pt", model=model)
    key = next(k for k in model.state_dict() if k.endswith("embed.weight"))
    trained = model.state_dict()[key]
    assert torch.equal(trained, glove) is freeze
    assert torch.equal(trained[0], glove[0])  # the padding row never moves
    rebuilt, _ = build_model_from_checkpoint(load_checkpoint(tmp_path / "e.pt"), glove.clone())
    assert torch.equal(rebuilt.state_dict()[key], trained)  # evaluation sees the fine-tuned vectors


# --------------------------------------------------------------------------------------------
# safe loading: checkpoints hold tensors and plain types, read with weights_only=True
# --------------------------------------------------------------------------------------------


def test_rng_states_survive_a_weights_only_round_trip(tmp_path) -> None:
    import random

    from fian.train import rng_state, save_checkpoint, set_rng_state

    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    random.gauss(0, 1), np.random.randn()  # cached gaussians are part of both states
    save_checkpoint(tmp_path / "r.pt", {"rng": rng_state()})
    expected = (random.random(), random.gauss(0, 1), np.random.randn(3).tolist(), torch.rand(3).tolist())
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    raw = torch.load(tmp_path / "r.pt", weights_only=True)  # a second reader: plain torch, safe mode
    assert raw["format"] == 2
    set_rng_state(raw["rng"])
    assert (random.random(), random.gauss(0, 1), np.random.randn(3).tolist(), torch.rand(3).tolist()) == expected


def test_save_refuses_what_weights_only_could_not_read(tmp_path) -> None:
    from fian.train import save_checkpoint

    with pytest.raises(TypeError, match=r"checkpoint\.rng\.numpy is a numpy\.ndarray"):
        save_checkpoint(tmp_path / "x.pt", {"rng": {"numpy": np.zeros(3)}})
    assert not (tmp_path / "x.pt").exists()


class _Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _evil_checkpoint(path, marker) -> None:
    """A checkpoint-shaped dict whose config unpickles into a shell command (format 2 claimed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    good = {"model": {}, "best_model": {}, "epoch": 1}
    torch.save({"format": 2, "config": _Payload(marker), **good}, path)


def test_pickle_bearing_checkpoint_is_refused_and_not_executed(tmp_path) -> None:
    from fian.train import UnsafeCheckpointError

    marker = tmp_path / "PWNED"
    _evil_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pt: refused to load: .*pickled Python objects \(posix\.system\)"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    # an older checkpoint (numpy RNG state pickled): refused with a hint, not loaded
    torch.save({"format": 1, "config": {}, "rng": {"numpy": np.random.get_state()}}, tmp_path / "old.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"old\.pt: refused .*numpy.*older fian \(format 1"):
        load_checkpoint(tmp_path / "old.pt")
    # a plain file of another format
    torch.save({"format": 1, "config": {}, "model": {}, "best_model": {}, "epoch": 1}, tmp_path / "f1.pt")
    with pytest.raises(ValueError, match=r"f1\.pt: fian checkpoint format 1, this version reads format 2"):
        load_checkpoint(tmp_path / "f1.pt")


def _fian(*args: str, cwd) -> subprocess.CompletedProcess:
    import os
    import sys
    from pathlib import Path

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run([str(Path(sys.executable).parent / "fian"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_crafted_checkpoint_runs_nothing_in_evaluate_or_resume(tiny_files, tmp_path) -> None:
    """`fian evaluate --checkpoint` and `fian train --resume` on a crafted file: clear refusal, exit 1,
    the payload's marker file never appears."""
    _, params, data, text = tiny_files
    marker = tmp_path / "PWNED"
    evil = tmp_path / "given" / "checkpoint.pt"
    _evil_checkpoint(evil, marker)
    ev = _fian("evaluate", "--params", *params, "--data", str(data), "--text", str(text), "--checkpoint", str(evil),
               "--split", "test", "--out", str(tmp_path / "ev"), "--device", "cpu", cwd=tmp_path)  # fmt: skip
    assert ev.returncode == 1, ev.stderr[-2000:]
    assert f"{evil}: refused to load" in ev.stderr and "could run code" in ev.stderr, ev.stderr[-2000:]
    assert not marker.exists() and not (tmp_path / "ev").exists()

    out = tmp_path / "results"
    _evil_checkpoint(out / "checkpoint.pt", marker)
    tr = _fian("train", "--params", *params, "--data", str(data), "--text", str(text), "--out", str(out),
               "--device", "cpu", "--resume", cwd=tmp_path)  # fmt: skip
    assert tr.returncode == 1, tr.stderr[-2000:]
    assert f"{out / 'checkpoint.pt'}: refused to load" in tr.stderr, tr.stderr[-2000:]
    assert not marker.exists()


def test_two_seeds_through_the_stages(tiny_files) -> None:
    """Issue 16 on real runs: `--seed` replaces train.seed (another initialisation, recorded in the
    checkpoint, train_info.json and info_<split>.json with the inputs' sha256); evaluate refuses a
    checkpoint of another seed; aggregate summarizes the two runs; compare's per-query R@1 from the
    real predictions files reproduces the metrics files' R@1 (top-1 hits, whatever the NMS)."""
    import hashlib

    from fian_pipeline import aggregate, compare, evaluate, train
    from fian_pipeline.common import run_stage

    tmp, params, data, text = tiny_files
    runs = {0: tmp / "results"}  # seed 0 (params' train.seed): the run of test_train_evaluate_baseline_stages
    if not (runs[0] / "metrics_test.json").is_file():  # run alone (-k)
        test_train_evaluate_baseline_stages(tiny_files)
    for seed in (1,):
        out = tmp / "seeds" / f"seed{seed}"
        assert train.main(["--params", *params, "--data", str(data), "--text", str(text), "--out", str(out),
                           "--seed", str(seed)]) == 0  # fmt: skip
        args = ["--params", *params, "--data", str(data), "--text", str(text), "--checkpoint", str(out / "checkpoint.pt")]
        assert evaluate.main([*args, "--split", "test", "--out", str(out), "--seed", str(seed)]) == 0
        runs[seed] = out
    ckpt = [load_checkpoint(runs[s] / "checkpoint.pt") for s in (0, 1)]
    assert [c["config"]["train"]["seed"] for c in ckpt] == [0, 1]
    differ = [k for k, v in ckpt[0]["model"].items() if not torch.equal(v, ckpt[1]["model"][k])]
    assert differ  # another initialisation and batch order (the same seed reproduces a run: tests/test_resume.py)
    prov = json.loads((runs[1] / "train_info.json").read_text())["provenance"]
    assert prov["seed"] == 1 and prov["mlflow"] is None  # tracking is off in this config
    assert prov["device"] == {"kind": "cpu", "name": "cpu", "count": 1, "threads": torch.get_num_threads()}
    assert prov["batch_size"] == {"effective": 8, "per_device": 8}
    assert prov["inputs_sha256"]["train.h5"] == hashlib.sha256((data / "train.h5").read_bytes()).hexdigest()
    assert prov["inputs_sha256"]["embeddings.npy"] == hashlib.sha256((text / "embeddings.npy").read_bytes()).hexdigest()
    assert prov["git_dirty"] in ("true", "false", "unknown") and "features" in prov and "word_vectors" in prov
    info = json.loads((runs[1] / "info_test.json").read_text())["provenance"]
    assert info["seed"] == 1 and info["inputs_sha256"]["test.h5"] == hashlib.sha256((data / "test.h5").read_bytes()).hexdigest()
    # evaluate checks the seed the checkpoint was trained with
    args = ["--params", *params, "--data", str(data), "--text", str(text), "--checkpoint", str(runs[1] / "checkpoint.pt")]
    assert run_stage(evaluate.main, [*args, "--split", "test", "--out", str(tmp / "wrong"), "--seed", "0"]) == 1
    assert not (tmp / "wrong").exists()

    summary = tmp / "seeds" / "summary_test.json"
    files = {k: [str(runs[s] / f) for s in (0, 1)] for k, f in
             (("m", "metrics_test.json"), ("i", "info_test.json"), ("t", "train_info.json"))}  # fmt: skip
    assert aggregate.main(["--metrics", *files["m"], "--info", *files["i"], "--train-info", *files["t"],
                           "--out", str(summary)]) == 0  # fmt: skip
    s = json.loads(summary.read_text())
    r1 = [json.loads((runs[k] / "metrics_test.json").read_text())["R@1,IoU=0.5"] for k in (0, 1)]
    assert s["seeds"] == [0, 1] and s["metrics"]["R@1,IoU=0.5"]["values"] == {"0": r1[0], "1": r1[1]}

    out = tmp / "seeds" / "compare_fian_test.json"
    preds = [str(runs[k] / "predictions_test.jsonl") for k in (0, 1)]
    assert compare.main(["--predictions", *preds, "--info", *files["i"], "--reference", *preds,
                         "--reference-info", *files["i"], "--out", str(out)]) == 0  # fmt: skip
    c = json.loads(out.read_text())["metrics"]
    for name in ("R@1,IoU=0.5", "R@1,IoU=0.7"):
        per_seed = [json.loads((runs[k] / "metrics_test.json").read_text())[name] for k in (0, 1)]
        assert c[name]["variant"] == pytest.approx(np.mean(per_seed), abs=1e-9)  # the metrics' own R@1
        assert (c[name]["difference"], c[name]["low"], c[name]["high"]) == (0.0, 0.0, 0.0)  # itself


@pytest.mark.parametrize(
    "T,duration,gt_seconds,gt_steps",
    [
        # seconds / duration * T, by hand: 23.3 / 93.2 = 1/4 -> 50; 12.5 / 50 = 1/4, 30 / 50 = 3/5 -> 120
        (200, [93.2, 50.0, 10.0], [[23.3, 46.6], [12.5, 30.0], [0.0, 10.0]], [[50, 100], [50, 120], [0, 200]]),
        # Charades' T = 64: 3 / 32 * 64 = 6; 31.5 s of 31.5 -> the whole 64; 5 / 20 * 64 = 16
        (64, [32.0, 31.5, 20.0], [[3.0, 8.0], [0.0, 31.5], [5.0, 7.5]], [[6, 16], [0, 64], [16, 24]]),
    ],
)
def test_training_hands_the_loss_step_targets(T, duration, gt_seconds, gt_steps) -> None:
    """The targets the training loop hands the loss are the seconds -> steps conversion
    (fian.losses.seconds_to_steps, docs/ARCHITECTURE.md "Time"), computed by hand here."""
    import dataclasses

    from fian.data.dataset import GroundingSplit
    from fian.losses import FIANLoss

    class Recorder(torch.nn.Module):
        offset_unit = "steps"

        def __init__(self) -> None:
            super().__init__()
            self.inner, self.seen = FIANLoss(tau=0.5, alpha=0.005), []

        def forward(self, out, gt_steps):
            self.seen.append(gt_steps.detach().cpu().clone())
            return self.inner(out, gt_steps)

    cfg = tiny_config(epochs=1)
    cfg = dataclasses.replace(cfg, features=dataclasses.replace(cfg.features, num_steps=T))
    rng = np.random.default_rng(0)
    split = GroundingSplit.from_arrays(
        rng.normal(size=(3, T, 16)).astype(np.float32), np.arange(3), 2 + np.arange(12).reshape(3, 4),
        np.full(3, 4), np.array(gt_seconds), np.array(duration), num_steps=T,
    )  # fmt: skip
    torch.manual_seed(0)
    loss = Recorder()
    fit(build_model(cfg, vocab_size=VOCAB), loss, split, None, train_cfg=cfg.train, eval_cfg=cfg.eval, num_steps=T,
        checkpoint=None, device="cpu", progress=False)  # fmt: skip
    seen = sorted(torch.cat(loss.seen).tolist())
    assert len(seen) == 3
    np.testing.assert_allclose(seen, sorted(gt_steps), rtol=1e-6, atol=1e-5)


# --------------------------------------------------------------------------------------------
# issue 17: the video-shuffle check on a trained checkpoint; no model selection on test
# --------------------------------------------------------------------------------------------


def test_shuffle_stage_scores_each_query_on_another_video(tiny_files, tmp_path) -> None:
    """The stage's predictions are those of the model on a split whose video array is permuted by
    the derangement of eval.shuffle_seed (built here by hand: row v holds video perm[v]), not the
    model's own-video predictions; rerun, the files are the same."""
    from fian.baselines import derangement
    from fian.data.dataset import GroundingSplit, load_embeddings
    from fian.evaluate import evaluate as run_eval
    from fian.evaluate import write_predictions
    from fian_pipeline import evaluate, train

    _, params, data, text = tiny_files
    out = tmp_path / "fian"
    assert train.main(["--params", *params, "--data", str(data), "--text", str(text), "--out", str(out)]) == 0
    args = ["--params", *params, "--data", str(data), "--text", str(text), "--checkpoint", str(out / "checkpoint.pt"),
            "--split", "test"]  # fmt: skip
    assert evaluate.main([*args, "--out", str(out)]) == 0
    assert evaluate.main([*args, "--out", str(out / "shuffled"), "--shuffle-videos"]) == 0
    info = json.loads((out / "shuffled/info_test.json").read_text())
    perm = derangement(3, 0)  # the test split's 3 videos, params' eval.shuffle_seed 0
    assert info["shuffle"]["seed"] == 0 and info["shuffle"]["features_from"] == {
        f"vid{i}": f"vid{int(j)}" for i, j in enumerate(perm)}  # fmt: skip
    assert info["provenance"]["seed"] == 0 and info["split"] == "test"

    test = GroundingSplit.load(data / "test.h5")
    moved = GroundingSplit.from_arrays(
        test.video.numpy()[perm], test.video_index, test.words, test.word_len, test.gt, test.duration,
        records=test.records, num_steps=test.num_steps, video_ids=test.video_ids,
    )  # fmt: skip
    embeddings, _ = load_embeddings(text)
    model, cfg = build_model_from_checkpoint(load_checkpoint(out / "checkpoint.pt"), embeddings)
    frame, metrics = run_eval(model, moved, eval_cfg=cfg.eval, num_steps=cfg.features.num_steps, device="cpu")
    write_predictions(tmp_path / "reference.jsonl", frame)
    got = (out / "shuffled/predictions_test.jsonl").read_text()
    assert got == (tmp_path / "reference.jsonl").read_text()
    assert got != (out / "predictions_test.jsonl").read_text()  # the model's own videos give other moments
    shuffled_metrics = json.loads((out / "shuffled/metrics_test.json").read_text())
    assert {k: shuffled_metrics[k] for k in metrics} == pytest.approx(metrics)
    # reproducible: the same seed, the same files
    assert evaluate.main([*args, "--out", str(tmp_path / "again"), "--shuffle-videos"]) == 0
    assert (tmp_path / "again/predictions_test.jsonl").read_text() == got


def test_without_validation_the_last_epoch_is_kept_and_test_is_never_read(tiny_files, tmp_path, monkeypatch) -> None:
    """Charades-STA has no validation split (issue 17 item 3): the train stage selects nothing, it
    keeps the last epoch, and it reads no split but train (a test.h5 that is not even a split and a
    stray val.h5 beside it are never opened)."""
    import dataclasses
    import shutil

    from fian.data.dataset import GroundingSplit
    from fian_pipeline import train

    _, _, data, text = tiny_files
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(data / "train.h5", folder / "train.h5")
    (folder / "test.h5").write_bytes(b"not a split: reading it fails")
    (folder / "val.h5").write_bytes(b"not a split either")
    cfg = tiny_config(epochs=3)  # the release lists train and test only
    cfg = dataclasses.replace(cfg, dataset=dataclasses.replace(cfg.dataset, splits={"train": ("a.txt",), "test": ("b.txt",)}))
    params = _write_params(tmp_path, cfg)
    loaded: list[str] = []
    load = GroundingSplit.load
    monkeypatch.setattr(GroundingSplit, "load", staticmethod(lambda path, *a, **k: (loaded.append(Path(path).name),
                                                                                   load(path, *a, **k))[1]))  # fmt: skip
    out = tmp_path / "out"
    assert train.main(["--params", *params, "--data", str(folder), "--text", str(text), "--out", str(out)]) == 0
    assert loaded == ["train.h5"]
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["best_epoch"] == ckpt["epoch"] == 3 and ckpt["best_by"] == "last epoch"
    for k, v in ckpt["model"].items():  # the weights evaluate uses are the last epoch's
        assert torch.equal(v, ckpt["best_model"][k]), k
    assert json.loads((out / "train_info.json").read_text())["best_by"] == "last epoch (no validation split)"
    assert not [c for c in pd.read_csv(out / "history.csv").columns if c.startswith(("val/", "test"))]
