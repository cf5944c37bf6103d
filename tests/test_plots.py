"""Figures are written: the Figure-6-like timeline and the training curves (Agg backend)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fian_pipeline.common import run_stage
from fian_pipeline.plots import main as plots_main


def _run(tmp: Path, n_queries: int = 5) -> tuple[Path, Path]:
    pred = tmp / "results/synthetic/fian/predictions_test.jsonl"
    pred.parent.mkdir(parents=True)
    lines = []
    for i in range(n_queries):
        lines.append(json.dumps({
            "index": i, "video_id": f"v{i}", "sentence": f"the person opens the red door again {i}",
            "gt": [10.0 + i, 20.0 + i], "duration": 60.0,
            "segments": [[12.0, 22.0 + i], [0.0, 5.0]], "scores": [0.9, None],
        }))  # fmt: skip
    pred.write_text("\n".join(lines) + "\n")
    hist = pred.parent / "history.csv"
    hist.write_text(
        "epoch,loss,align,boundary,val/R@1,IoU=0.5,val/mIoU\n1,1.0,0.8,2.0,0.1,0.2\n2,0.7,0.5,1.5,0.3,0.35\n"
    )
    return pred, hist


def test_stage_writes_both_figures(tmp_path: Path) -> None:
    pred, hist = _run(tmp_path)
    out = tmp_path / "figs"
    assert (
        plots_main(["--predictions", str(pred), "--history", str(hist), "--split", "test", "--out", str(out)])
        == 0
    )
    for name in ("timeline_test.png", "training_curves_test.png"):
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5_000, name


@pytest.mark.parametrize(
    ("predictions", "history", "needle"),
    [
        ('{"index": 0}\n', None, "line 1"),
        (None, "loss,align\n1,2\n", "'epoch'"),
        ("", None, "no predictions"),
    ],
)
def test_bad_inputs_name_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], predictions, history, needle
) -> None:
    pred, hist = _run(tmp_path)
    if predictions is not None:
        pred.write_text(predictions)
    if history is not None:
        hist.write_text(history)
    out = tmp_path / "figs"
    code = run_stage(
        plots_main, ["--predictions", str(pred), "--history", str(hist), "--split", "test", "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert code == 1 and needle in err and (str(pred) in err or str(hist) in err)
    assert not out.exists() or not list(out.glob("*.png"))
