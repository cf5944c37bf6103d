"""`fian params explain|overridden`: each layer's value of a key and the winner (later layer wins)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fian_pipeline import cli


def _layers(tmp_path: Path) -> list[str]:
    (tmp_path / "base.yaml").write_text("train:\n  lr: 0.1\n  epochs: 5\nmodel:\n  stride_ratio: 0.5\n")
    (tmp_path / "d.yaml").write_text("dataset:\n  name: d\ntrain:\n  lr: 0.2\n")
    (tmp_path / "v.yaml").write_text("train:\n  lr: 0.3\n")
    return [str(tmp_path / f) for f in ("base.yaml", "d.yaml", "v.yaml")]


def test_explain_prints_every_layer_and_the_winner(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = _layers(tmp_path)
    assert cli.main(["params", "explain", "train.lr", "--params", *files]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "base.yaml: train.lr" in lines[0] and "0.1" in lines[0] and "(overridden)" in lines[0]
    assert "d.yaml: train.lr" in lines[1] and "0.2" in lines[1] and "(overridden)" in lines[1]
    assert "v.yaml: train.lr" in lines[2] and "0.3" in lines[2] and "<- wins" in lines[2]
    assert lines[3].endswith("train.lr = 0.3")
    # a key only base sets wins there; a key no layer sets takes the code default (train.seed: 0)
    assert cli.main(["params", "explain", "train.epochs", "--params", *files]) == 0
    out = capsys.readouterr().out
    assert "base.yaml: train.epochs" in out and "<- wins" in out and "train.epochs = 5" in out
    assert cli.main(["params", "explain", "train.seed", "--params", *files]) == 0
    assert "set by no layer" in capsys.readouterr().out
    assert cli.main(["params", "explain", "train.nosuch", "--params", *files]) == 1
    assert "train.nosuch: no such key" in capsys.readouterr().err


def test_overridden_lists_the_keys_set_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = _layers(tmp_path)
    assert cli.main(["params", "overridden", "--params", *files]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"train.lr: {files[0]} is overridden by {files[2]}",
        f"train.lr: {files[1]} is overridden by {files[2]}",
    ]
