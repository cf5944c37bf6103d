"""Figures are written: the Figure-6-like timeline, the training curves and the attention maps
(Agg backend), by the plots stage on a tiny split and an untrained checkpoint of a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from train_helpers import VOCAB, marked_split, tiny_config

from fian_pipeline.common import run_stage
from fian_pipeline.plots import main as plots_main


def _plain(o):
    if isinstance(o, dict):
        return {k: _plain(v) for k, v in o.items()}
    return [_plain(v) for v in o] if isinstance(o, list | tuple) else o


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """params, a test split, word vectors and a checkpoint (random weights: the stage draws what the
    model attends to, trained or not), predictions of that split and a history."""
    from fian.model.build import build_model
    from fian.train import save_checkpoint

    tmp = tmp_path_factory.mktemp("plots")
    cfg = tiny_config()
    d = cfg.to_dict()
    d.pop("variant")
    (tmp / "params").mkdir()
    (tmp / "params/base.yaml").write_text(yaml.safe_dump(_plain(d)))
    (tmp / "params/tiny.yaml").write_text("{}\n")
    (tmp / "params/fian.yaml").write_text("{}\n")
    split = marked_split(n_videos=3, seed=4)
    split.save(tmp / "data/test.h5")
    (tmp / "text").mkdir()
    (tmp / "text/vocab.json").write_text(json.dumps(["<pad>", "<unk>"] + [f"w{i}" for i in range(VOCAB - 2)]))
    emb = np.random.default_rng(0).normal(size=(VOCAB, 16)).astype(np.float32)
    emb[0] = 0
    np.save(tmp / "text/embeddings.npy", emb)
    torch.manual_seed(0)
    model = build_model(cfg, torch.from_numpy(emb))
    state = model.state_dict()
    save_checkpoint(tmp / "run/checkpoint.pt", {"config": cfg.to_dict(), "model": state, "best_model": state, "epoch": 1})
    pred = tmp / "results/tiny/fian/predictions_test.jsonl"
    pred.parent.mkdir(parents=True)
    lines = []
    for i, (rec, row) in enumerate(zip(split.records.itertuples(), split.rows.tolist(), strict=True)):
        lines.append(json.dumps({
            "index": row, "video_id": rec.video_id, "sentence": f"the person opens the red door again {i}",
            "gt": [rec.start, rec.end], "duration": rec.duration,
            "segments": [[rec.start + 2.0, rec.end + 4.0], [0.0, 5.0]], "scores": [0.9, None],
        }))  # fmt: skip
    pred.write_text("\n".join(lines) + "\n")
    hist = pred.parent / "history.csv"
    hist.write_text(
        "epoch,loss,align,boundary,val/R@1,IoU=0.5,val/mIoU\n1,1.0,0.8,2.0,0.1,0.2\n2,0.7,0.5,1.5,0.3,0.35\n"
    )
    params = [str(tmp / "params" / n) for n in ("base.yaml", "tiny.yaml", "fian.yaml")]
    return {"tmp": tmp, "params": params, "pred": pred, "hist": hist}


def _argv(run: dict, out: Path) -> list[str]:
    t = run["tmp"]
    return ["--params", *run["params"], "--predictions", str(run["pred"]), "--history", str(run["hist"]),
            "--checkpoint", str(t / "run/checkpoint.pt"), "--data", str(t / "data"), "--text", str(t / "text"),
            "--split", "test", "--out", str(out)]  # fmt: skip


def test_stage_writes_the_three_figures(run: dict, tmp_path: Path) -> None:
    out = tmp_path / "figs"
    assert plots_main(_argv(run, out)) == 0
    for name in ("timeline_test.png", "training_curves_test.png", "attention_test.png"):
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5_000, name


@pytest.mark.parametrize(
    ("predictions", "history", "needle"),
    [
        ('{"index": 0}\n', None, "line 1"),
        (None, "loss,align\n1,2\n", "'epoch'"),
        ("", None, "no predictions"),
        ('{"index": 999, "video_id": "v", "sentence": "s", "gt": [1, 2], "duration": 64, "segments": [], "scores": []}\n',
         None, "query index 999 is not a row of"),
    ],
)  # fmt: skip
def test_bad_inputs_name_the_file(
    run: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], predictions, history, needle
) -> None:
    pred, hist = tmp_path / "predictions_test.jsonl", tmp_path / "history.csv"
    pred.write_text(run["pred"].read_text() if predictions is None else predictions)
    hist.write_text(run["hist"].read_text() if history is None else history)
    out = tmp_path / "figs"
    code = run_stage(plots_main, _argv({**run, "pred": pred, "hist": hist}, out))
    err = capsys.readouterr().err
    assert code == 1 and needle in err and (str(pred) in err or str(hist) in err), err
    assert not out.exists() or not list(out.glob("*.png"))
