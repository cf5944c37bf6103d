"""Annotation parsers and validation on tiny files the tests write (every bad input, every policy)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from fian.config import PolicyConfig
from fian.data.annotations import (
    COLUMNS,
    AnnotationError,
    load_annotations,
    read_activitynet,
    read_split,
    read_tacos,
    validate,
)

ANET = {
    "v_a": {"duration": 10.0, "timestamps": [[0.0, 4.0], [3.0, 12.5]], "sentences": ["A man runs.", " Jumps "]},
    "v_b": {"duration": 20.0, "timestamps": [[5.0, 5.0], [8.0, 2.0], [1.0, 2.0]], "sentences": ["x", "y", "   "]},
}


def write(path: Path, obj: object) -> Path:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def test_activitynet_rows_are_normalized(tmp_path: Path) -> None:
    df = read_activitynet(write(tmp_path / "train.json", ANET), "train")
    assert list(df.columns) == COLUMNS and len(df) == 5
    row = df.iloc[1]
    assert (row.video_id, row.duration, row.start, row.end, row.sentence) == ("v_a", 10.0, 3.0, 12.5, "Jumps")
    assert row.source == "train.json:v_a[1]" and row.split == "train"


def test_tacos_frames_become_seconds(tmp_path: Path) -> None:
    rec = {"s13.avi": {"num_frames": 300, "fps": 30.0, "timestamps": [[30, 150]], "sentences": ["cut it"]}}
    df = read_tacos(write(tmp_path / "t.json", rec), "val")
    assert df.iloc[0][["duration", "start", "end"]].tolist() == [10.0, 1.0, 5.0]


def test_charades_txt_with_csv_durations(tmp_path: Path) -> None:
    write(tmp_path / "sta.txt", "AAA 0.0 6.9##a person sits.\n\nBBB 1.5 3.0##person opens door\n")
    write(tmp_path / "v1.csv", "id,subject,length\nAAA,x,33.67\n\"BBB\",y,8\n")
    df = read_split(tmp_path, "charades", "train", ["sta.txt", "v1.csv"])
    assert df["duration"].tolist() == [33.67, 8.0] and df["source"].tolist() == ["sta.txt:1", "sta.txt:3"]
    write(tmp_path / "sta.txt", "CCC 0 1##not in the csv\n")
    assert math.isnan(read_split(tmp_path, "charades", "train", ["sta.txt", "v1.csv"])["duration"][0])


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"v": {"duration": 1, "timestamps": [[0, 1]],\n "sentences": ["a"]', r"bad\.json: line 2 column \d+: malformed JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"v_x": {"duration": 1, "timestamps": [[0, 1]]}}', r"bad\.json:v_x: missing key\(s\) \['sentences'\]"),
        ('{"v_x": {"duration": 1, "timestamps": [[0, 1]], "sentences": []}}', "v_x: 1 timestamps but 0 sentences"),
        ('{"v_x": {"duration": 1, "timestamps": [[0]], "sentences": ["a"]}}', r"v_x\[0\]: timestamp must be a pair"),
        ('{"v_x": {"duration": 1, "timestamps": [[0, "1"]], "sentences": ["a"]}}', r"v_x\[0\]: end must be a number"),
        ('{"v_x": {"duration": "long", "timestamps": [], "sentences": []}}', "v_x: duration must be a number"),
    ],
)
def test_malformed_json_names_file_and_record(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(AnnotationError, match=match):
        read_activitynet(write(tmp_path / "bad.json", text), "train")


def test_tacos_bad_fps_names_video(tmp_path: Path) -> None:
    rec = {"s1.avi": {"num_frames": 10, "fps": 0, "timestamps": [], "sentences": []}}
    with pytest.raises(AnnotationError, match=r"t\.json:s1\.avi: fps must be > 0"):
        read_tacos(write(tmp_path / "t.json", rec), "train")


@pytest.mark.parametrize(
    ("line", "match"),
    [("AAA 0.0 6.9 a person sits.", r"sta\.txt:2: expected 'video_id start end##sentence'"),
     ("AAA 0.0##x", r"sta\.txt:2: expected"),
     ("AAA zero 6.9##x", r"sta\.txt:2: start/end 'zero' '6.9' are not numbers")],
)
def test_malformed_charades_line_names_file_and_line(tmp_path: Path, line: str, match: str) -> None:
    write(tmp_path / "sta.txt", f"AAA 0 1##ok\n{line}\n")
    write(tmp_path / "v1.csv", "id,length\nAAA,10\n")
    with pytest.raises(AnnotationError, match=match):
        read_split(tmp_path, "charades", "train", ["sta.txt", "v1.csv"])


def test_bad_charades_csv(tmp_path: Path) -> None:
    write(tmp_path / "sta.txt", "AAA 0 1##ok\n")
    write(tmp_path / "v1.csv", "id,duration\nAAA,10\n")
    with pytest.raises(AnnotationError, match=r"v1\.csv: need columns 'id' and 'length'"):
        read_split(tmp_path, "charades", "train", ["sta.txt", "v1.csv"])
    write(tmp_path / "v1.csv", "id,length\nAAA,10\nBBB,n/a\n")
    with pytest.raises(AnnotationError, match=r"v1\.csv:3 \(video BBB\): length 'n/a' is not a number"):
        read_split(tmp_path, "charades", "train", ["sta.txt", "v1.csv"])


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.json.*split 'val'"):
        read_split(tmp_path, "activitynet", "val", ["nope.json"])


def test_default_policy_counts_each_case(tmp_path: Path) -> None:
    df = read_activitynet(write(tmp_path / "train.json", ANET), "train")
    out, counts = validate(df, PolicyConfig())  # drop, clip, fail, drop
    assert counts["empty_sentence"] == 1 and counts["start_ge_end"] == 2 and counts["past_end"] == 1
    assert counts["pairs_raw"] == 5 and counts["pairs_kept"] == 2 == len(out)
    assert out["end"].tolist() == [4.0, 10.0]  # 12.5 clipped to the duration
    assert counts["policy"]["past_end"] == "clip"


def test_policies_drop_and_fail(tmp_path: Path) -> None:
    df = read_activitynet(write(tmp_path / "train.json", ANET), "train")
    out, counts = validate(df, PolicyConfig(past_end="drop"))
    assert counts["pairs_kept"] == 1 and out["sentence"].tolist() == ["A man runs."]
    with pytest.raises(AnnotationError, match=r"2 pair\(s\) with start_ge_end.*train\.json:v_b\[0\] \(video v_b: start 5\.0 >= end 5\.0\)"):
        validate(df, PolicyConfig(start_ge_end="fail"))
    with pytest.raises(AnnotationError, match=r"past_end.*train\.json:v_a\[1\].*outside \[0, 10\.0\]"):
        validate(df, PolicyConfig(past_end="fail"))
    with pytest.raises(AnnotationError, match=r"empty_sentence.*v_b\[2\]"):
        validate(df, PolicyConfig(empty_sentence="fail"))


def test_missing_duration_policy(tmp_path: Path) -> None:
    df = read_activitynet(write(tmp_path / "a.json", {"v": {"duration": None, "timestamps": [[0, 1]], "sentences": ["s"]},
                                                     "w": {"duration": 5, "timestamps": [[0, 1]], "sentences": ["s"]}}), "test")
    with pytest.raises(AnnotationError, match=r"missing_duration.*a\.json:v\[0\]"):
        validate(df, PolicyConfig())
    out, counts = validate(df, PolicyConfig(missing_duration="drop"))
    assert counts["missing_duration"] == 1 and out["video_id"].tolist() == ["w"]


def test_moment_wholly_past_the_end_cannot_be_clipped(tmp_path: Path) -> None:
    df = pd.DataFrame([dict(video_id="v", duration=5.0, start=6.0, end=9.0, sentence="s", split="train", source="f:1"),
                       dict(video_id="v", duration=5.0, start=-1.0, end=2.0, sentence="s", split="train", source="f:2")])
    out, counts = validate(df, PolicyConfig())
    assert counts["past_end"] == 2 and counts["past_end_unclippable"] == 1
    assert out[["start", "end"]].values.tolist() == [[0.0, 2.0]]


def test_stage_writes_parquet_and_counts(tmp_path: Path) -> None:
    from fian_pipeline.annotations import main

    raw = tmp_path / "raw"
    raw.mkdir()
    write(raw / "train.json", ANET)
    write(raw / "val.json", {"v_c": {"duration": 3.0, "timestamps": [[0, 1]], "sentences": ["ok"]}})
    params = write(tmp_path / "p.yaml", "dataset:\n  splits:\n    train: [train.json]\n    val: [val.json]\n")
    assert main(["--params", str(params), "--raw", str(raw), "--out", str(tmp_path / "out")]) == 0
    train = pd.read_parquet(tmp_path / "out" / "train.parquet")
    assert len(train) == 2 and list(train.columns) == COLUMNS
    counts = json.loads((tmp_path / "out" / "counts.json").read_text())
    assert counts["splits"]["train"]["start_ge_end"] == 2 and counts["splits"]["val"]["pairs_kept"] == 1
    # a failing policy writes nothing
    params.write_text(params.read_text() + "  policy:\n    start_ge_end: fail\n")
    with pytest.raises(AnnotationError):
        main(["--params", str(params), "--raw", str(raw), "--out", str(tmp_path / "out2")])
    assert not (tmp_path / "out2").exists()
    with pytest.raises(AnnotationError, match="dataset.splits is empty"):
        load_annotations(raw, "activitynet", {}, PolicyConfig())
    write(raw / "empty.json", {})
    with pytest.raises(AnnotationError, match=r"split 'val' \(empty\.json in .*raw\): no pair left \(0 before"):
        load_annotations(raw, "activitynet", {"val": ["empty.json"]}, PolicyConfig())


# ------------------------------------------------------------------ bad inputs that used to pass silently


def run_annotations(tmp_path: Path, files: dict[str, str | bytes], splits: str, capsys: pytest.CaptureFixture,
                    fmt: str = "activitynet") -> tuple[int, str, Path]:
    """The annotations stage command (run_stage: one line on stderr, exit status) on raw ``files``."""
    from fian_pipeline.annotations import main
    from fian_pipeline.common import run_stage

    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    for name, content in files.items():
        (raw / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    params = write(tmp_path / "p.yaml", f"dataset:\n  format: {fmt}\n  splits: {splits}\n")
    code = run_stage(main, ["--params", str(params), "--raw", str(raw), "--out", str(out)])
    return code, capsys.readouterr().err, out


CAFE = '{"v_a": {"duration": 10, "timestamps": [[0, 1]], "sentences": ["caf\xe9"]}}'  # not ASCII


def rec(sentence: str = "a man runs", duration: float = 10.0) -> str:
    return json.dumps({"duration": duration, "timestamps": [[0, 1]], "sentences": [sentence]})


def test_duplicate_video_key_names_the_key_file_and_lines(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    text = f'{{\n"v_a": {rec("first")},\n"v_b": {rec()},\n"v_a": {rec("second")}\n}}\n'
    assert len(json.loads(text)) == 2  # what the parser alone does: the first v_a is gone
    code, err, out = run_annotations(tmp_path, {"train.json": text}, "{train: [train.json]}", capsys)
    assert code == 1 and not out.exists()
    assert re.search(r"train\.json: video key\(s\) appear more than once: 'v_a' at lines 2, 4;", err), err


def test_duplicate_key_inside_a_record_names_the_video(tmp_path: Path) -> None:
    text = '{"v_a": {"duration": 10, "duration": 20, "timestamps": [[0, 1]], "sentences": ["s"]}}'
    with pytest.raises(AnnotationError, match=r"t\.json:v_a: key\(s\) \['duration'\] appear more than once"):
        read_activitynet(write(tmp_path / "t.json", text), "train")


def test_train_test_leak_names_the_video_and_both_splits(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    files = {"train.json": f'{{"v_a": {rec()}, "v_x": {rec()}}}', "val.json": f'{{"v_b": {rec()}}}',
             "test.json": f'{{"v_c": {rec()}, "v_x": {rec()}}}'}
    splits = "{train: [train.json], val: [val.json], test: [test.json]}"
    code, err, out = run_annotations(tmp_path, files, splits, capsys)
    assert code == 1 and not out.exists()
    assert ("video 'v_x' is in split 'train' (train.json:v_x[0]) and in split 'test' (test.json:v_x[0])" in err
            and "must not share videos (a leak)" in err), err


def test_val_and_test_may_share_videos(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """ActivityNet's val_1 / val_2 (our val / test) are two annotation sets of the same videos."""
    files = {"train.json": f'{{"v_a": {rec()}}}', "val.json": f'{{"v_b": {rec("one")}}}',
             "test.json": f'{{"v_b": {rec("two")}}}'}
    code, err, out = run_annotations(tmp_path, files, "{train: [train.json], val: [val.json], test: [test.json]}",
                                     capsys)  # fmt: skip
    assert code == 0, err
    assert pd.read_parquet(out / "test.parquet")["sentence"].tolist() == ["two"]


def test_charades_leak_across_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    files = {"tr.txt": "AAA 0 1##a\nBBB 0 1##b\n", "te.txt": "CCC 0 1##c\nBBB 2 3##d\n", "v.csv": "id,length\nAAA,9\nBBB,9\nCCC,9\n"}
    code, err, out = run_annotations(tmp_path, files, "{train: [tr.txt, v.csv], test: [te.txt, v.csv]}", capsys,
                                     fmt="charades")  # fmt: skip
    assert code == 1 and not out.exists()
    assert "video 'BBB' is in split 'train' (tr.txt:2) and in split 'test' (te.txt:2)" in err, err


@pytest.mark.parametrize(
    ("fmt", "name", "content", "offset", "line"),
    [
        ("activitynet", "train.json", CAFE.encode("latin-1"), None, 1),
        ("charades", "tr.txt", b"AAA 0 1##a\nAAA 1 2##na\xefve\n", 11 + 11, 2),
        ("charades", "v.csv", b"id,length\nAAA,9\n\xff\xfe,3\n", 10 + 6, 3),
    ],
)
def test_non_utf8_names_the_file_and_byte_offset(tmp_path: Path, capsys: pytest.CaptureFixture, fmt: str,
                                                 name: str, content: bytes, offset: int | None, line: int) -> None:
    offset = content.index(b"\xe9") if offset is None else offset
    files = {"train.json": f'{{"v_a": {rec()}}}', "tr.txt": "AAA 0 1##a\n", "v.csv": "id,length\nAAA,9\n"}
    files = {k: v for k, v in files.items() if (k.endswith(".json")) == (fmt == "activitynet")}
    files[name] = content
    splits = "{train: [train.json]}" if fmt == "activitynet" else "{train: [tr.txt, v.csv]}"
    code, err, out = run_annotations(tmp_path, files, splits, capsys, fmt=fmt)
    assert code == 1 and not out.exists()
    want = f"{name}: not UTF-8: byte 0x{content[offset]:02x} at byte offset {offset} (line {line})"
    assert want in err, err


def test_a_utf8_bom_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "t.json").write_bytes(b"\xef\xbb\xbf" + CAFE.encode())
    df = read_activitynet(tmp_path / "t.json", "train")
    assert df["sentence"].tolist() == ["caf\xe9"]
