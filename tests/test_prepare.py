"""The prepare stage end to end on a tiny generated set: generate -> annotations -> features -> prepare."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fian.data.dataset import GroundingSplit
from fian.data.features import FeatureStore, downsample
from fian_pipeline.common import StageError

TINY = "dataset:\n  synthetic:\n    seed: 2\n    n_videos: {train: 8, val: 3, test: 3}\n"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> dict[str, Path]:
    """Run the data stages once on a tiny synthetic set; the text stage's vocab.json is built here."""
    from fian.data.text import Vocab, tokenize
    from fian_pipeline import annotations, features, generate, prepare

    root = tmp_path_factory.mktemp("prep")
    (root / "tiny.yaml").write_text(TINY)
    params = ["--params", str(repo_root / "params/base.yaml"), str(repo_root / "params/datasets/synthetic.yaml"),
              str(root / "tiny.yaml")]  # fmt: skip
    p = {k: root / k for k in ("raw_ann", "raw_feat", "ann", "text", "out")}
    p["store"] = root / "features.h5"
    assert (
        generate.main([*params, "--annotations-out", str(p["raw_ann"]), "--features-out", str(p["raw_feat"])])
        == 0
    )
    assert annotations.main([*params, "--raw", str(p["raw_ann"]), "--out", str(p["ann"])]) == 0
    assert (
        features.main(
            [*params, "--raw", str(p["raw_feat"]), "--annotations", str(p["ann"]), "--out", str(p["store"])]
        )
        == 0
    )
    train = pd.read_parquet(p["ann"] / "train.parquet")
    Vocab.build(tokenize(s) for s in train["sentence"]).save(p["text"] / "vocab.json")
    # the text stage's coverage.json: "the" (in the vocabulary) has no word vector: "the the" is all-OOV
    (p["text"] / "coverage.json").write_text(json.dumps({"oov_words": ["the"], "fallback": True}))
    argv = [*params, "--annotations", str(p["ann"]), "--features", str(p["store"]), "--text", str(p["text"])]
    block_bytes = prepare.BLOCK_BYTES
    prepare.BLOCK_BYTES = 3 * 64 * 64 * 4  # blocks of 3 videos (T = D = 64): the streamed writes, a short last block
    try:
        assert prepare.main([*argv, "--out", str(p["out"])]) == 0
    finally:
        prepare.BLOCK_BYTES = block_bytes
    p["argv"] = argv  # type: ignore[assignment]
    return p


def test_prepared_splits_match_their_inputs(built: dict) -> None:
    from fian.data.text import Vocab, tokenize

    vocab = Vocab.load(built["text"] / "vocab.json")
    counts = json.loads((built["out"] / "counts.json").read_text())
    assert sorted(p.name for p in built["out"].iterdir()) == ["counts.json", "test.h5", "train.h5", "val.h5"]
    with FeatureStore(built["store"]) as store:
        for split in ("train", "val", "test"):
            table = pd.read_parquet(built["ann"] / f"{split}.parquet")
            s = GroundingSplit.load(built["out"] / f"{split}.h5")
            assert len(s) == len(table) == counts["splits"][split]["queries_out"]
            assert s.num_steps == 64 and s.video.shape[1:] == (64, 64) and s.attrs["synthetic"] is True
            assert s.video_ids == sorted(table["video_id"].unique())
            for i, vid in enumerate(s.video_ids):  # features: the downsampled store rows
                assert np.allclose(s.video[i].numpy(), downsample(store.get(vid), 64)[0])
            for q in range(len(s)):  # queries: their own video, tokens, moment
                assert s.video_ids[int(s.video_index[q])] == table["video_id"][q]
                n = int(s.word_len[q])
                want = [t if t in vocab else "<unk>" for t in tokenize(table["sentence"][q])[:30]]
                assert [vocab.itos[i] for i in s.words[q, :n]] == want
            assert np.allclose(s.gt.numpy(), table[["start", "end"]].to_numpy())
            assert np.allclose(s.duration.numpy(), table["duration"].to_numpy())
            assert s.records["sentence"].tolist() == table["sentence"].tolist()
    assert counts["splits"]["train"]["dropped_missing_features"] == 0 and counts["num_steps"] == 64


def _variant(built: dict, tmp_path: Path, extra_rows: list[dict], policy: str | None = None) -> list[str]:
    """A copy of the annotations with extra test rows, and argv (with a policy layer) writing to tmp."""
    ann = tmp_path / "ann"
    shutil.copytree(built["ann"], ann)
    test = pd.read_parquet(ann / "test.parquet")
    row = test.iloc[0].to_dict()
    pd.concat([test, pd.DataFrame([{**row, **r} for r in extra_rows])], ignore_index=True).to_parquet(
        ann / "test.parquet"
    )
    argv = list(built["argv"])
    argv[argv.index("--annotations") + 1] = str(ann)
    if policy:
        (tmp_path / "policy.yaml").write_text(f"dataset:\n  policy:\n{policy}")
        argv.insert(argv.index("--annotations"), str(tmp_path / "policy.yaml"))
    return [*argv, "--out", str(tmp_path / "out")]


@pytest.mark.parametrize(
    ("row", "match"),
    [
        (
            {"video_id": "v_ghost", "source": "test.json:v_ghost[0]"},
            r"has no features in .*features.h5; first: test.json:v_ghost\[0\]",
        ),
        (
            {"sentence": "zzzq xxyq", "source": "test.json:k[9]"},
            r"test.parquet: 1 quer\(ies\) with all_oov .*test.json:k\[9\]",
        ),
        (
            {"sentence": " ... ", "source": "test.json:k[8]"},
            r"test.parquet: 1 quer\(ies\) with empty_sentence .*k\[8\]",
        ),
    ],
)
def test_bad_queries_fail_per_policy_and_write_nothing(
    built: dict, tmp_path: Path, row: dict, match: str
) -> None:
    from fian_pipeline.prepare import main

    policy = "    missing_features: fail\n    all_oov: fail\n    empty_sentence: fail\n"
    with pytest.raises(StageError, match=match):
        main(_variant(built, tmp_path, [row], policy))
    assert not (tmp_path / "out").exists()  # every check runs before the first split is written


def test_bad_queries_dropped_and_counted(built: dict, tmp_path: Path) -> None:
    from fian_pipeline.prepare import main

    rows = [{"video_id": "v_ghost"}, {"sentence": "zzzq"}, {"sentence": "the the"}, {"sentence": "?!"},
            {"sentence": "the man " * 20}]  # fmt: skip
    policy = "    missing_features: drop\n    all_oov: drop\n    empty_sentence: drop\n"
    assert main(_variant(built, tmp_path, rows, policy)) == 0
    c = json.loads((tmp_path / "out" / "counts.json").read_text())["splits"]["test"]
    assert (c["dropped_missing_features"], c["dropped_all_oov"], c["dropped_empty_sentence"]) == (1, 2, 1)
    assert c["truncated_to_max_query_len"] == 1 and c["queries_out"] == c["queries_in"] - 4
    s = GroundingSplit.load(tmp_path / "out" / "test.h5")
    assert len(s) == c["queries_out"] and int(s.word_len.max()) == 30  # truncated to text.max_query_len


def test_missing_inputs_and_mismatched_store(built: dict, tmp_path: Path) -> None:
    from fian.data.features import write_store
    from fian_pipeline.prepare import main

    argv = [*built["argv"], "--out", str(tmp_path / "out")]
    text = argv.index("--text") + 1
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        main([*argv[:text], str(tmp_path / "none"), *argv[text + 1 :]])
    shutil.copytree(built["text"], tmp_path / "text")
    (tmp_path / "text" / "coverage.json").write_text("[]")
    with pytest.raises(StageError, match="coverage.json: expected a JSON object with 'oov_words'"):
        main([*argv[:text], str(tmp_path / "text"), *argv[text + 1 :]])
    write_store(tmp_path / "narrow.h5", [("v", np.zeros((3, 8)), None)], backbone="x", feature_dim=8)
    feats = argv.index("--features") + 1
    with pytest.raises(StageError, match="feature_dim 8 != dataset.feature_dim 64"):
        main([*argv[:feats], str(tmp_path / "narrow.h5"), *argv[feats + 1 :]])
    assert not (tmp_path / "out").exists()
