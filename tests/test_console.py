"""The train job's console line: one per epoch, named by the job, on stdout (the rule sends only
stderr, with the progress bar, to the log: tests/test_render_drift.py, tests/test_snakemake.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fian.config import config_from_dict
from fian_pipeline.common import duration, eta_seconds, print_epoch
from fian_pipeline.registry import STAGES


def test_one_line_per_epoch_named_by_the_job(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config_from_dict({"dataset": {"name": "tacos"}, "train": {"epochs": 30}})
    cfg = type(cfg)(**{**cfg.__dict__, "variant": "soft"})
    print_epoch(cfg, {"epoch": 3, "loss": 1.23456, "val/R@1,IoU=0.5": 0.4567, "time_s": 12.4}, eta_s=27 * 12.0)
    print_epoch(cfg, {"epoch": 4, "loss": 1.0})  # no validation split, no timing
    print_epoch(cfg, {"epoch": 5, "loss": 1.0, "time_s": 3725.0}, eta_s=25 * 3725.0)  # no validation split
    print_epoch(cfg, {"epoch": 29, "loss": 1.0, "time_s": 0.4}, eta_s=0.4)
    print_epoch(cfg, {"epoch": 30, "loss": 0.5, "val/R@1,IoU=0.5": 0.5, "time_s": 12.6}, eta_s=0.0)
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "[tacos/soft] epoch 3/30 loss 1.2346 val R@1,IoU=0.5 45.67% | epoch 12 s (train + val) | ETA 5 min 24 s (27 epochs left)",
        "[tacos/soft] epoch 4/30 loss 1.0000",
        "[tacos/soft] epoch 5/30 loss 1.0000 | epoch 1 h 02 min (train) | ETA 25 h 52 min (25 epochs left)",
        "[tacos/soft] epoch 29/30 loss 1.0000 | epoch 0 s (train) | ETA 0 s (1 epoch left)",
        "[tacos/soft] epoch 30/30 loss 0.5000 val R@1,IoU=0.5 50.00% | epoch 13 s (train + val) | last epoch",
    ]
    assert err == ""


def test_eta_is_the_epochs_left_times_the_mean_steady_epoch() -> None:
    assert eta_seconds([], 5) is None
    assert eta_seconds([10.0], 4) == 40.0  # one epoch timed: it is all there is
    assert eta_seconds([30.0, 10.0, 12.0], 3) == 3 * 11.0  # the first (warm-up) left out
    assert eta_seconds([30.0, 10.0], 0) == 0.0
    assert [duration(s) for s in (0.4, 59.4, 60, 3599, 3600, 7500)] == ["0 s", "59 s", "1 min 00 s", "59 min 59 s",
                                                                        "1 h 00 min", "2 h 05 min"]  # fmt: skip


def test_only_train_talks_to_the_console() -> None:
    assert [s.name for s in STAGES if s.console] == ["train", "train_seed"]  # one run, or one per seed
    assert re.search(r"print_epoch\(cfg, \w+, eta_s=\w+, seed=args\.seed\)", (Path(__file__).resolve().parents[1] / "pipeline/train.py").read_text())


def test_a_seeds_job_says_its_seed(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config_from_dict({"dataset": {"name": "tacos"}, "train": {"epochs": 30}})
    print_epoch(cfg, {"epoch": 1, "loss": 2.0}, seed=2)
    assert capsys.readouterr().out == "[tacos/fian seed 2] epoch 1/30 loss 2.0000\n"
