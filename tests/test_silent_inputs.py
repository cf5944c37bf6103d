"""The last inputs that passed silently (issue 18, "Silent inputs that remain"): each is now a clear
error naming the file and the record (or a counted, reported drop), and nothing is written on error.
Unit-level: every test reads or writes a few small files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fian.config import PolicyConfig
from fian.data.annotations import AnnotationError, read_activitynet, read_split, read_tacos, validate
from fian_pipeline.common import run_stage

# ------------------------------------------------------------------------------------- annotations


@pytest.mark.parametrize(
    ("text", "match"),
    [   # JSON's NaN / Infinity literals: Python's parser reads them as floats
        ('{"v": {"duration": 10, "timestamps": [[NaN, 4]], "sentences": ["a"]}}', r"a\.json:v\[0\]: start is nan"),
        ('{"v": {"duration": 10, "timestamps": [[1, NaN]], "sentences": ["a"]}}', r"a\.json:v\[0\]: end is nan"),
        ('{"v": {"duration": Infinity, "timestamps": [[1, 4]], "sentences": ["a"]}}', r"a\.json:v: duration is inf"),
        ('{"v": {"duration": 10, "timestamps": [[-Infinity, 4]], "sentences": ["a"]}}', r"a\.json:v\[0\]: start is -inf"),
    ],
)
def test_activitynet_nan_and_infinity_literals_are_refused(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "a.json").write_text(text)
    with pytest.raises(AnnotationError, match=match + ", not a finite number"):
        read_activitynet(tmp_path / "a.json", "train")


def test_tacos_and_charades_non_finite_numbers_are_refused(tmp_path: Path) -> None:
    (tmp_path / "t.json").write_text('{"s1.avi": {"num_frames": 300, "fps": NaN, "timestamps": [[0, 30]], "sentences": ["a"]}}')
    with pytest.raises(AnnotationError, match=r"t\.json:s1\.avi: fps is nan, not a finite number"):
        read_tacos(tmp_path / "t.json", "train")
    (tmp_path / "sta.txt").write_text("AAA 0 1##ok\nAAA nan 2.0##a person sits\n")
    (tmp_path / "v1.csv").write_text("id,length\nAAA,10\n")
    with pytest.raises(AnnotationError, match=r"sta\.txt:2: start is nan, not a finite number"):
        read_split(tmp_path, "charades", "train", ["sta.txt", "v1.csv"])
    (tmp_path / "sta.txt").write_text("AAA 0 1##ok\n")
    (tmp_path / "v1.csv").write_text("id,length\nAAA,inf\n")
    with pytest.raises(AnnotationError, match=r"v1\.csv:2 \(video AAA\): length is inf, not a finite number"):
        read_split(tmp_path, "charades", "train", ["sta.txt", "v1.csv"])


def test_validate_counts_an_infinite_duration_as_missing_and_refuses_nan_times() -> None:
    """A table not built by the parsers (bring your own): the same rules hold in :func:`validate`."""
    rows = [dict(video_id="v", duration=math.inf, start=1.0, end=4.0, sentence="s", split="train", source="f:1"),
            dict(video_id="w", duration=9.0, start=1.0, end=4.0, sentence="s", split="train", source="f:2")]
    with pytest.raises(AnnotationError, match=r"missing_duration and policy 'fail': f:1 \(video v: duration inf\)"):
        validate(pd.DataFrame(rows), PolicyConfig())
    out, counts = validate(pd.DataFrame(rows), PolicyConfig(missing_duration="drop"))
    assert counts["missing_duration"] == 1 and out["video_id"].tolist() == ["w"]
    rows[1]["start"] = math.nan
    with pytest.raises(AnnotationError, match=r"1 pair\(s\) with a non-finite start or end: f:2 \(video w: \[nan, 4\.0\]\)"):
        validate(pd.DataFrame(rows), PolicyConfig(missing_duration="drop"))


def test_annotations_stage_writes_nothing_for_an_infinite_duration(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    from fian_pipeline.annotations import main

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "train.json").write_text('{"v": {"duration": 10, "timestamps": [[1, 4]], "sentences": ["a man"]},\n'
                                    ' "w": {"duration": Infinity, "timestamps": [[1, 4]], "sentences": ["a dog"]}}')
    params = tmp_path / "p.yaml"
    params.write_text("dataset:\n  format: activitynet\n  splits: {train: [train.json]}\n")
    out = tmp_path / "out"
    assert run_stage(main, ["--params", str(params), "--raw", str(raw), "--out", str(out)]) == 1
    assert "train.json:w: duration is inf, not a finite number" in capsys.readouterr().err
    assert not out.exists()


# ------------------------------------------------------------------------------------ word vectors


def test_a_row_with_one_number_too_many_is_an_error_not_an_unknown_word(tmp_path: Path) -> None:
    from fian.data.text import TextError, Vocab, read_glove

    g = tmp_path / "g.txt"
    g.write_text("person 1 2 3 4\nat 1 2 3 4 5\n")  # word_dim 4: 'at' has 5 numbers
    with pytest.raises(TextError, match=r"g\.txt:2: 'at' is followed by 5 numbers, expected 4 \(text.word_dim\)"):
        read_glove(g, Vocab(["person", "at"]), dim=4)
    # 840B's "words" with spaces still read (their extra fields are not numbers), a trailing space too
    g.write_text("person 1 2 3 4 \n. . . 5 5 5 5\nat name@domain.com 6 6 6 6\n2010 7 7 7 7\n")
    hits = read_glove(g, Vocab(["person", ". . .", "at name@domain.com", "2010"]), dim=4)
    assert [hits.vectors[i].tolist() for i in (2, 3, 4, 5)] == [[1, 2, 3, 4], [5] * 4, [6] * 4, [7] * 4]


def test_a_duplicate_word_keeps_its_first_vector_and_is_counted_and_reported(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from fian.data.text import Vocab, read_glove
    from fian_pipeline.text import main

    g = tmp_path / "glove.txt"
    g.write_text("the 1 0 0 0\nman 0 1 0 0\nruns 0 0 1 0\nman 9 9 9 9\nzebra 1 1 1 1\nzebra 2 2 2 2\n")
    hits = read_glove(g, Vocab(["the", "man", "runs"]), dim=4)
    assert hits.duplicates == [("man", 2, 4)]  # zebra is not a vocabulary word: never parsed
    assert hits.vectors[3].tolist() == [0, 1, 0, 0]
    ann = tmp_path / "ann"
    ann.mkdir()
    for split, sentence in (("train", "the man runs"), ("val", "the man")):
        pd.DataFrame({"video_id": "v", "duration": 9.0, "start": 0.0, "end": 1.0, "sentence": [sentence],
                      "split": split, "source": [f"{split}.json:v[0]"]}).to_parquet(ann / f"{split}.parquet")
    params = tmp_path / "p.yaml"
    params.write_text("text:\n  word_dim: 4\ndataset:\n  splits: {train: [t.json], val: [v.json]}\n")
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        assert run_stage(main, ["--params", str(params), "--annotations", str(ann), "--glove", str(g),
                                "--out", str(out)]) == 0
    report = json.loads((out / "coverage.json").read_text())
    assert report["duplicate_words"] == {"count": 1, "kept": "first", "examples": [["man", 2, 4]]}
    assert "1 vocabulary word(s) listed more than once, e.g. 'man' (lines 2 and 4)" in caplog.text
    emb, vocab = np.load(out / "embeddings.npy"), json.loads((out / "vocab.json").read_text())
    assert emb[vocab.index("man")].tolist() == [0, 1, 0, 0]


# ------------------------------------------------------------------------------------------ params


def test_a_key_given_twice_in_a_params_file_is_an_error_naming_file_key_and_lines(tmp_path: Path) -> None:
    from fian.config import ConfigError, load_config
    from fian_pipeline.layers import read_layer

    p = tmp_path / "variant.yaml"
    p.write_text("train:\n  lr: 0.001\n  epochs: 3\n  lr: 0.1\n")
    for read in (load_config, read_layer):
        with pytest.raises(ConfigError, match=r"variant\.yaml: key\(s\) given twice in one mapping: 'train\.lr' at "
                                              r"lines 2 and 4; YAML would silently keep only the last"):
            read(p)
    p.write_text("model: {hidden: 16}\ntrain: {epochs: 2}\nmodel: {heads: 2}\n")  # a whole section twice
    with pytest.raises(ConfigError, match=r"'model' at lines 1 and 3"):
        load_config(p)
    # YAML merge keys may repeat what they merge: that is YAML's rule, not a duplicate
    p.write_text("x: &a {lr: 0.5}\n")
    assert read_layer(p) == {"x": {"lr": 0.5}}
    p.write_text("base: &b {lr: 0.5, epochs: 2}\ntrain:\n  <<: *b\n  lr: 0.25\n")
    assert read_layer(p)["train"] == {"lr": 0.25, "epochs": 2}


def test_a_workflow_config_key_given_twice_is_an_error(tmp_path: Path, repo_root: Path) -> None:
    from fian_pipeline.common import StageError
    from fian_pipeline.render import load_plan

    (tmp_path / "c.yaml").write_text("datasets:\n  synthetic: {variants: [fian]}\nparams_dir: params\nparams_dir: p2\n")
    with pytest.raises(StageError, match=r"c\.yaml: key\(s\) given twice in one mapping: 'params_dir' at lines 3 and 4"):
        load_plan(tmp_path / "c.yaml", repo_root)


@pytest.mark.parametrize(("key", "value"), [("train.lr", ".nan"), ("loss.tau", ".nan"), ("train.grad_clip", ".inf"),
                                            ("model.dropout", ".nan"), ("eval.iou_thresholds", "[0.5, .nan]"),
                                            ("text.glove_x_max", "-.inf")])
def test_non_finite_float_params_are_refused_naming_file_and_key(tmp_path: Path, repo_root: Path,
                                                                 key: str, value: str) -> None:
    from fian.config import ConfigError, load_config

    section, name = key.split(".")
    (tmp_path / "v.yaml").write_text(f"{section}:\n  {name}: {value}\n")
    with pytest.raises(ConfigError, match=rf"v\.yaml: {key}(\[1\])?: expected a finite number, got -?(nan|inf)"):
        load_config(repo_root / "params/base.yaml", tmp_path / "v.yaml")


@pytest.mark.parametrize(("key", "value", "bound"), [("text.max_query_len", 100_000_000, 512),
                                                     ("features.num_steps", 10**7, 2048)])
def test_sizes_that_would_exhaust_memory_are_refused(tmp_path: Path, repo_root: Path, key: str, value: int,
                                                     bound: int) -> None:
    from fian.config import ConfigError, load_config

    section, name = key.split(".")
    (tmp_path / "v.yaml").write_text(f"{section}:\n  {name}: {value}\n")
    with pytest.raises(ConfigError, match=rf"{key} = {value} \(in .*v\.yaml\): must be in \[1, {bound}\]"):
        load_config(repo_root / "params/base.yaml", tmp_path / "v.yaml")
    (tmp_path / "v.yaml").write_text(f"{section}:\n  {name}: {bound}\n")  # the bound itself is allowed
    cfg = load_config(repo_root / "params/base.yaml", tmp_path / "v.yaml")
    assert getattr(getattr(cfg, section), name) == bound


def test_a_params_file_that_is_not_utf8_is_named_with_its_line(tmp_path: Path, repo_root: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    from fian_pipeline.annotations import main

    data = b"dataset:\n  name: tiny\n  # caf\xe9 au lait\n"  # Latin-1
    (tmp_path / "d.yaml").write_bytes(data)
    argv = ["--params", str(repo_root / "params/base.yaml"), str(tmp_path / "d.yaml"), "--raw", str(tmp_path),
            "--out", str(tmp_path / "out")]
    assert run_stage(main, argv) == 1
    assert f"d.yaml: not UTF-8: byte 0xe9 at byte offset {data.index(0xE9)} (line 3)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------- JSON and text input files

DEEP = "[" * 100_000  # Python's JSON parser recurses once per bracket: RecursionError, not a message


def _deep_readers(tmp: Path) -> list:
    from fian.data.dataset import load_embeddings
    from fian.data.text import Vocab
    from fian.reports.tables import read_metrics

    (tmp / "text").mkdir()
    np.save(tmp / "text/embeddings.npy", np.zeros((2, 4), np.float32))
    return [(lambda p: read_activitynet(p, "train"), "a.json", DEEP), (Vocab.load, "vocab.json", DEEP),
            (lambda p: load_embeddings(p.parent), "text/vocab.json", DEEP), (read_metrics, "metrics_val.json", DEEP)]


def test_json_nested_too_deeply_is_a_clear_error_naming_the_file(tmp_path: Path) -> None:
    from fian_pipeline.common import StageError

    for read, name, text in _deep_readers(tmp_path):
        (tmp_path / name).write_text(text)
        with pytest.raises((ValueError, StageError), match=rf"{name}: JSON nested too deeply"):
            read(tmp_path / name)
    # a --queries file: the deep line is that line's error, the good line is kept (per-line answers)
    from fian_pipeline.predict import read_queries

    (tmp_path / "q.jsonl").write_text('{"query": "a", "video": "v.mp4"}\n' + DEEP)
    lines = read_queries(tmp_path / "q.jsonl")
    assert [(x["line"], x["error"]) for x in lines] == [(1, None), (2, "not valid JSON (nested too deeply)")]


def test_queries_and_coverage_files_that_are_not_utf8_are_named_with_the_line(tmp_path: Path, repo_root: Path,
                                                                              capsys: pytest.CaptureFixture) -> None:
    from fian_pipeline.predict import read_queries
    from fian_pipeline.prepare import main

    q = tmp_path / "q.jsonl"
    q.write_bytes(b'{"query": "a man", "video": "a.mp4"}\n{"query": "un caf\xe9", "video": "b.mp4"}\n')
    lines = read_queries(q)  # per-line errors (issue 18 "Predict CLI"): the good line is kept
    assert [(x["line"], x["error"]) for x in lines] == [(1, None), (2, "not UTF-8 (byte 18 of the line)")]  # by hand: {"query": "un caf = 17 bytes
    ann, text = tmp_path / "ann", tmp_path / "text"
    ann.mkdir(), text.mkdir()
    pd.DataFrame({"video_id": ["v"], "duration": [9.0], "start": [0.0], "end": [1.0], "sentence": ["a man"],
                  "split": ["train"], "source": ["t.json:v[0]"]}).to_parquet(ann / "train.parquet")
    (text / "vocab.json").write_text('["<pad>", "<unk>", "a", "man"]')
    (text / "coverage.json").write_bytes(b'{"glove": "g.txt",\n "oov_words": ["caf\xe9"]}\n')
    (tmp_path / "d.yaml").write_text("dataset:\n  splits: {train: [t.json]}\n")
    out = tmp_path / "out"
    argv = ["--params", str(repo_root / "params/base.yaml"), str(tmp_path / "d.yaml"), "--annotations", str(ann),
            "--features", str(tmp_path / "none.h5"), "--text", str(text), "--out", str(out)]
    assert run_stage(main, argv) == 1
    assert "coverage.json: not UTF-8: byte 0xe9 at byte offset 38 (line 2)" in capsys.readouterr().err  # by hand
    assert not out.exists()


# ------------------------------------------------------------------------------------- checkpoints


def test_a_checkpoint_with_nan_weights_is_refused_naming_the_tensor(tmp_path: Path, repo_root: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    """Such weights score every candidate NaN: evaluate wrote all-zero metrics with exit 0 and
    predict printed [] before; now load_checkpoint refuses the file, before anything is written."""
    import torch
    from train_helpers import VOCAB, marked_split, tiny_config

    from fian.model.build import build_model
    from fian.predict import Predictor
    from fian.train import load_checkpoint, save_checkpoint
    from fian_pipeline.evaluate import main

    cfg = tiny_config()
    state = build_model(cfg, vocab_size=VOCAB).state_dict()
    name = next(k for k, t in state.items() if t.is_floating_point() and t.dim() == 2 and "embed" not in k)
    poisoned = {**state, name: state[name].clone()}
    poisoned[name][0, :3] = torch.tensor([math.nan, math.inf, math.nan])
    ckpt = tmp_path / "checkpoint.pt"
    save_checkpoint(ckpt, {"config": cfg.to_dict(), "model": state, "best_model": poisoned, "epoch": 1})
    want = rf"checkpoint\.pt: best_model tensor '{name}' \[\d+, \d+\] holds 3 non-finite value\(s\) \(inf, nan\)"
    for load in (load_checkpoint, Predictor.from_checkpoint):
        with pytest.raises(ValueError, match=want):
            load(ckpt)
    marked_split().save(tmp_path / "data/val.h5")
    (tmp_path / "text").mkdir()
    (tmp_path / "text/vocab.json").write_text(json.dumps(["<pad>", "<unk>", *(f"w{i}" for i in range(VOCAB - 2))]))
    np.save(tmp_path / "text/embeddings.npy", np.zeros((VOCAB, cfg.text.word_dim), np.float32))
    out = tmp_path / "results"
    argv = ["--params", str(repo_root / "params/base.yaml"), "--data", str(tmp_path / "data"), "--text",
            str(tmp_path / "text"), "--checkpoint", str(ckpt), "--split", "val", "--out", str(out), "--device", "cpu"]
    assert run_stage(main, argv) == 1
    assert f"best_model tensor '{name}'" in capsys.readouterr().err
    assert not out.exists()


# ---------------------------------------------------------------------------------- raw feature files


def test_a_dead_writers_temp_is_never_the_feature_file(tmp_path: Path) -> None:
    from fian.data.features import find_feature_file
    from fian.io import temp_name
    from fian_pipeline.extract import find_videos

    temp = tmp_path / temp_name(tmp_path / "mine.h5", ".h5")  # what a writer killed mid-write leaves
    temp.write_bytes(b"half an HDF5 file")
    assert temp.name.startswith(".mine.h5.fian-tmp.")
    with pytest.raises(FileNotFoundError, match=r"expected a single \*\.hdf5/\*\.h5 file for layout i3d_hdf5, found \[\]"):
        find_feature_file(tmp_path, "i3d_hdf5")  # alone in the folder: it was taken as THE file
    (tmp_path / "mine.h5").write_bytes(b"the real one")
    assert find_feature_file(tmp_path, "i3d_hdf5") == tmp_path / "mine.h5"  # not "two candidates"
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "clip.mp4").write_bytes(b"v")
    (videos / temp_name(videos / "clip2.mp4", ".mp4")).write_bytes(b"half a copy")
    assert find_videos(videos) == {"clip": videos / "clip.mp4"}


# ------------------------------------------------------------------------------------------- secrets


@pytest.mark.parametrize(("text", "want"), [
    ("at http://user:tok3n@host:5000 now", "at http://user:***@host:5000 now"),
    ("https://alice:p@ss:w0rd@mlflow.example.org/x?y=1", "https://alice:***@mlflow.example.org/x?y=1"),  # raw @
    ("http://tok3n@host/", "http://***@host/"),
    ("postgresql://u:pw@db:5432/mlflow", "postgresql://u:***@db:5432/mlflow"),
    ("https://h/x?token=abc&y=2&X-Amz-Signature=zz", "https://h/x?token=***&y=2&X-Amz-Signature=***"),
    ("sqlite:///mlflow.db, file:///a/b@c, http://host:5000/a@b, user@example.com", None),  # nothing secret
])
def test_redact_hides_the_credentials_of_uris(text: str, want: str | None) -> None:
    from fian.tracking import redact

    assert redact(text) == (text if want is None else want)


def test_stage_errors_and_log_lines_are_redacted(capsys: pytest.CaptureFixture) -> None:
    import logging
    import sys

    from fian.tracking import RedactingFormatter

    def failing(argv: object) -> int:
        raise OSError("API request to http://fian-user:s3cret@127.0.0.1:5000/api/2.0/mlflow/runs/create failed")

    assert run_stage(failing, []) == 1
    assert capsys.readouterr().err == ("error: API request to http://fian-user:***@127.0.0.1:5000/api/2.0/mlflow/"
                                       "runs/create failed\n")
    try:
        raise RuntimeError("no route to http://u:s3cret@h")
    except RuntimeError:
        record = logging.LogRecord("fian", logging.ERROR, __file__, 1, "store %s", ("http://u:s3cret@h",),
                                   exc_info=sys.exc_info())
    text = RedactingFormatter(logging.Formatter("%(message)s")).format(record)
    assert "s3cret" not in text and text.startswith("store http://u:***@h") and "RuntimeError: no route to http://u:***@h" in text
