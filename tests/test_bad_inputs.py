"""Bad inputs that used to pass silently (issue 12 item 5): each is a clear error naming the file and
the record, a non-zero exit of the stage command, and nothing written.  (Annotation files:
tests/test_annotations.py; downloads: tests/test_download.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fian.data.text import TextError, Vocab, read_glove
from fian_pipeline.common import run_stage

# ------------------------------------------------------------------------------------- GloVe lines


@pytest.mark.parametrize(("field", "shown"), [("nan", "'nan'"), ("-inf", "'-inf'"), ("1e39", "'1e39'")])
def test_non_finite_glove_field_names_file_line_and_field(tmp_path: Path, field: str, shown: str) -> None:
    g = tmp_path / "g.txt"
    g.write_text(f"the 1 2 3\nman 0.5 {field} 1\nzebra 1 1 1\n")  # 1e39 overflows float32 to inf
    with pytest.raises(TextError, match=rf"g\.txt:2: vector of 'man': field 2 is {shown}, not a finite float32"):
        read_glove(g, Vocab(["the", "man"]), dim=3)


def test_text_stage_stops_on_nan_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from fian_pipeline.text import main

    ann = tmp_path / "ann"
    ann.mkdir()
    pd.DataFrame({"video_id": "v", "duration": 9.0, "start": 0.0, "end": 1.0, "sentence": ["the man runs"],
                  "split": "train", "source": ["t.json:v[0]"]}).to_parquet(ann / "train.parquet")
    glove = tmp_path / "glove.txt"
    glove.write_text("the 1 0 0 0\nruns 0 1 0 0\nman 0 0 NaN 1\n")
    params = tmp_path / "p.yaml"
    params.write_text("text:\n  word_dim: 4\ndataset:\n  splits: {train: [t.json]}\n")
    out = tmp_path / "out"
    argv = ["--params", str(params), "--annotations", str(ann), "--glove", str(glove), "--out", str(out)]
    assert run_stage(main, argv) == 1
    assert "glove.txt:3: vector of 'man': field 3 is 'NaN'" in capsys.readouterr().err
    assert not out.exists()
    glove.write_text("the 1 0 0 0\nruns 0 1 0 0\nman 0 0 1 1\n")  # the same file, fixed
    assert run_stage(main, argv) == 0 and np.isfinite(np.load(out / "embeddings.npy")).all()


def test_diverged_fallback_glove_is_an_error_not_a_file(tmp_path: Path) -> None:
    from fian.data.glove import train_fallback

    out = tmp_path / "glove_fallback.txt"
    with pytest.raises(ValueError, match=r"glove_fallback\.txt: fallback GloVe diverged \(non-finite vectors"):
        train_fallback([["a", "b", "c"], ["b", "c", "d"]], out, dim=4, epochs=3, window=2, x_max=10.0, lr=1e38, seed=0)
    assert not out.exists()


# ------------------------------------------------------------------------------- params range checks


def test_range_errors_name_the_file_the_key_and_the_value(tmp_path: Path, repo_root: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    from fian_pipeline.annotations import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: -3\n  batch_size: 0\n")
    out = tmp_path / "out"
    argv = ["--params", str(repo_root / "params/base.yaml"), str(repo_root / "params/datasets/synthetic.yaml"),
            str(bad), "--raw", str(tmp_path), "--out", str(out)]  # fmt: skip
    assert run_stage(main, argv) == 1
    err = capsys.readouterr().err
    assert f"train.epochs = -3 (in {bad}): must be >= 0" in err, err
    assert f"train.batch_size = 0 (in {bad}): must be >= 1" in err, err
    assert not out.exists()


def test_a_rule_over_two_keys_names_both_files(tmp_path: Path, repo_root: Path) -> None:
    from fian.config import ConfigError, load_config

    steps = tmp_path / "steps.yaml"
    steps.write_text("features:\n  num_steps: 4\ntext:\n  glove_lr: 0\n")
    base = repo_root / "params/base.yaml"
    with pytest.raises(ConfigError) as e:
        load_config(base, steps)
    msg = str(e.value)
    assert f"model.window_sizes = [8, 16, 32, 64] (in {base}), features.num_steps = 4 (in {steps}):" in msg, msg
    assert f"text.glove_lr = 0.0 (in {steps}): must be > 0" in msg, msg
    with pytest.raises(ConfigError, match=r"train\.epochs = -1 \(in overrides\): must be >= 0"):
        load_config(base, overrides={"train": {"epochs": -1}})
