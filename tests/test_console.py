"""The train job's console line: one per epoch, named by the job, on stdout (the rule sends only
stderr, with the progress bar, to the log: tests/test_render_drift.py, tests/test_snakemake.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fian.config import config_from_dict
from fian_pipeline.common import print_epoch
from fian_pipeline.registry import STAGES


def test_one_line_per_epoch_named_by_the_job(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config_from_dict({"dataset": {"name": "tacos"}, "train": {"epochs": 30}})
    cfg = type(cfg)(**{**cfg.__dict__, "variant": "soft"})
    print_epoch(cfg, {"epoch": 3, "loss": 1.23456, "val/R@1,IoU=0.5": 0.4567, "time_s": 12.4})
    print_epoch(cfg, {"epoch": 4, "loss": 1.0})  # no validation split
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "[tacos/soft] epoch 3/30 loss 1.2346 val R@1,IoU=0.5 45.67% (12 s)",
        "[tacos/soft] epoch 4/30 loss 1.0000",
    ]
    assert err == ""


def test_only_train_talks_to_the_console() -> None:
    assert [s.name for s in STAGES if s.console] == ["train", "train_seed"]  # one run, or one per seed
    assert re.search(r"print_epoch\(cfg, \w+[,)]", (Path(__file__).resolve().parents[1] / "fian_pipeline/train.py").read_text())


def test_a_seeds_job_says_its_seed(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config_from_dict({"dataset": {"name": "tacos"}, "train": {"epochs": 30}})
    print_epoch(cfg, {"epoch": 1, "loss": 2.0}, seed=2)
    assert capsys.readouterr().out == "[tacos/fian seed 2] epoch 1/30 loss 2.0000\n"
