"""Tokenizer, vocabulary, streamed GloVe reader, OOV policies, sentence policies and the text stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fian.data.text import (
    TextError,
    Vocab,
    build_embeddings,
    encode_sentences,
    filter_sentences,
    known_mask,
    read_glove,
    tokenize,
    unseen_report,
    vocab_with_glove,
)

DIM = 4


def test_tokenize() -> None:
    assert tokenize("A person's T-shirt, then... he doesn't SIT!") == [
        "a", "person", "'s", "t-shirt", "then", "he", "does", "n't", "sit"]
    assert tokenize("Person opens the door.", lowercase=False) == ["Person", "opens", "the", "door"]
    assert tokenize(" ... !! -- ") == [] and tokenize("3 eggs_in a_bowl") == ["3", "eggs", "in", "a", "bowl"]


def test_vocab_build_encode_save_load(tmp_path: Path) -> None:
    v = Vocab.build([["b", "a", "c"], ["a", "c"], ["a"]])
    assert v.itos == ["<pad>", "<unk>", "a", "c", "b"]  # count desc, ties alphabetical
    assert v.encode(["a", "zzz", "b", "c"], max_len=3) == [2, 1, 4]
    v.save(tmp_path / "vocab.json")
    assert json.loads((tmp_path / "vocab.json").read_text())[:2] == ["<pad>", "<unk>"]
    assert Vocab.load(tmp_path / "vocab.json") == v and Vocab(["a", "c", "b"]) == v
    ids, lengths = encode_sentences(["A c.", "b b b b"], v, max_len=3)
    assert ids.tolist() == [[2, 3, 0], [4, 4, 4]] and lengths.tolist() == [2, 3]


@pytest.mark.parametrize(("text", "match"), [("{", "line 1 column 2: malformed JSON"), ('["a", "b"]', "starting with"),
                                             ('["<pad>", "<unk>", "a", "a"]', "'a' appears twice")])
def test_bad_vocab_file(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "v.json").write_text(text)
    with pytest.raises(TextError, match=match):
        Vocab.load(tmp_path / "v.json")


def glove_file(path: Path, rows: dict[str, list[float]]) -> Path:
    path.write_text("".join(f"{w} {' '.join(map(str, v))}\n" for w, v in rows.items()))
    return path


def test_read_glove_streams_last_dim_fields_and_cased_fallback(tmp_path: Path) -> None:
    vocab = Vocab(["person", "at", "sign", "missing"])
    f = glove_file(tmp_path / "g.txt", {
        "Person": [9, 9, 9, 9], "person": [1, 2, 3, 4],        # exact beats the cased variant
        ". . .": [5, 5, 5, 5],                                   # a "word" with spaces
        "Sign": [7, 7, 7, 7], "SIGN": [8, 8, 8, 8],             # first cased variant wins
        "at": [0.5, 0.5, 0.5, 0.5], "unused": [3, 3, 3, 3]})
    hits = read_glove(f, vocab, dim=DIM)
    assert hits.lines == 7 and sorted(hits.vectors) == [2, 3, 4]
    assert hits.vectors[2].tolist() == [1, 2, 3, 4] and hits.vectors[4].tolist() == [7, 7, 7, 7]
    vocab2 = Vocab([". . ."])
    assert read_glove(f, vocab2, dim=DIM).vectors[2].tolist() == [5, 5, 5, 5]


@pytest.mark.parametrize(("line", "match"), [("bad 1 2 3", r"g\.txt:2: expected a word and 4 numbers, got 3"),
                                             ("at 1 2 x 4", r"g\.txt:2: vector of 'at' has a field that is not a number")])
def test_bad_glove_line_names_file_and_line(tmp_path: Path, line: str, match: str) -> None:
    (tmp_path / "g.txt").write_text(f"person 1 2 3 4\n{line}\n")
    with pytest.raises(TextError, match=match):
        read_glove(tmp_path / "g.txt", Vocab(["person", "at"]), dim=DIM)


def test_oov_policies(tmp_path: Path) -> None:
    vocab = Vocab(["a", "b", "oov1", "oov2"])
    hits = read_glove(glove_file(tmp_path / "g.txt", {"a": [1, 1, 1, 1], "b": [3, 3, 3, 3]}), vocab, dim=DIM)
    zero = build_embeddings(vocab, hits, "zero")
    assert zero.dtype == np.float32 and zero.shape == (6, DIM)
    assert not zero[[0, 1, 4, 5]].any() and zero[2].tolist() == [1, 1, 1, 1]
    unk = build_embeddings(vocab, hits, "unk")
    assert not unk[0].any() and (unk[[1, 4, 5]] == 2.0).all()  # the mean of the found vectors
    r1, r2 = build_embeddings(vocab, hits, "random", seed=3), build_embeddings(vocab, hits, "random", seed=3)
    assert np.array_equal(r1, r2) and not r1[0].any() and not np.allclose(r1[4], r1[5])
    assert not np.array_equal(r1, build_embeddings(vocab, hits, "random", seed=4))


def test_vocab_with_glove_adds_only_covered_unseen_words(tmp_path: Path) -> None:
    train = Vocab.build([["a", "man", "walks"], ["a", "man"]])  # a, man, walks
    others = [["a", "woman", "walks"], ["the", "woman", "runs"], ["zzz", "runs"], ["Sign"]]
    f = glove_file(tmp_path / "g.txt", {"a": [1, 1, 1, 1], "woman": [6, 6, 6, 6], "Runs": [3, 3, 3, 3],
                                        "walks": [4, 4, 4, 4], "sign": [6, 6, 6, 6], "unused": [5, 5, 5, 5]})
    vocab, hits, added = vocab_with_glove(train, others, f, dim=DIM)
    # training words keep their ids; then unseen words GloVe covers, most frequent first, ties alphabetical;
    # "the" and "zzz" (GloVe lacks them) are not added: they stay <unk>; "runs" takes its cased variant
    assert vocab.itos[: len(train)] == train.itos
    assert added == ["runs", "woman"] and vocab.itos[len(train):] == ["runs", "woman"]
    assert "Sign" not in vocab  # a cased token matches only itself (a lowercase token also takes a cased row)
    assert {vocab.itos[i]: v.tolist() for i, v in hits.vectors.items()} == {
        "a": [1, 1, 1, 1], "walks": [4, 4, 4, 4], "runs": [3, 3, 3, 3], "woman": [6, 6, 6, 6]}
    assert vocab.encode(["the", "woman", "runs"]) == [1, vocab.stoi["woman"], vocab.stoi["runs"]]
    # <unk> = the mean of the TRAINING words' vectors only: adding words moves no other row
    emb = build_embeddings(vocab, hits, "unk", stats_rows=len(train))
    assert emb[1].tolist() == [2.5] * DIM and emb[vocab.stoi["man"]].tolist() == [2.5] * DIM  # mean of a, walks
    assert build_embeddings(vocab, hits, "unk")[1].tolist() == [3.5] * DIM  # without stats_rows: all four
    hits2 = read_glove(f, train, dim=DIM)
    np.testing.assert_array_equal(build_embeddings(train, hits2, "random", seed=1),
                                  build_embeddings(vocab, hits, "random", seed=1, stats_rows=len(train))[: len(train)])
    report = unseen_report(train, vocab, others)
    # woman | the woman runs | zzz runs | Sign: 7 unseen tokens, 4 of them (woman x2, runs x2) with a vector
    assert report == {"types": 5, "tokens": 7, "queries": 4, "types_with_vector": 2, "tokens_with_vector": 4,
                      "queries_with_vector": 3}


def test_sentence_policies_count_drop_and_fail() -> None:
    vocab = Vocab(["a", "b", "c"])
    known = known_mask(vocab, ["c"])  # c has no vector
    assert known.tolist() == [False, False, True, True, False]
    sents = ["a c", "?!", "c c", "zzz", "b"]
    keep, counts = filter_sentences(sents, vocab, known, empty_sentence="drop", all_oov="drop")
    assert keep.tolist() == [True, False, False, False, True] and counts == {"empty_sentence": 1, "all_oov": 2}
    with pytest.raises(TextError, match=r"2 quer\(ies\) with all_oov.*f:3 \('c c'\); f:4 \('zzz'\)"):
        filter_sentences(sents, vocab, known, empty_sentence="drop", all_oov="fail", sources=[f"f:{i + 1}" for i in range(5)])
    with pytest.raises(TextError, match=r"empty_sentence.*row 1"):
        filter_sentences(sents, vocab, known, empty_sentence="fail", all_oov="drop")


def _annotations(tmp_path: Path) -> Path:
    d = tmp_path / "ann"
    d.mkdir()
    mk = lambda sents, split: pd.DataFrame({"video_id": "v", "duration": 10.0, "start": 0.0, "end": 1.0,  # noqa: E731
                                             "sentence": sents, "split": split,
                                             "source": [f"{split}.json:v[{i}]" for i in range(len(sents))]})
    mk(["A man opens the door.", "The man sits.", "a cat purrs"], "train").to_parquet(d / "train.parquet")
    mk(["A dog opens the door.", "dog!!"], "test").to_parquet(d / "test.parquet")
    return d


def test_text_stage_with_glove_file(tmp_path: Path) -> None:
    from fian_pipeline.text import main

    ann = _annotations(tmp_path)
    g = glove_file(tmp_path / "g.txt", {w: [i + 1.0] * 300 for i, w in enumerate(["the", "man", "opens", "door", "dog"])})
    params = tmp_path / "p.yaml"
    # train-only vocabulary (text.vocab_from: train; the only behaviour before issue 11)
    params.write_text("text:\n  oov: zero\n  vocab_from: train\ndataset:\n  splits: {train: [t.json], test: [t.json]}\n")
    assert main(["--params", str(params), "--annotations", str(ann), "--glove", str(g), "--out", str(tmp_path / "tr")]) == 0
    vocab = Vocab.load(tmp_path / "tr" / "vocab.json")
    assert "dog" not in vocab and vocab.itos[2:5] == ["a", "man", "the"]  # train only; most frequent first
    cov = json.loads((tmp_path / "tr" / "coverage.json").read_text())
    assert cov["vocab_from"] == "train" and cov["vocab_added_words"] == 0
    assert cov["splits"]["test"]["all_oov"] == 1  # "dog" is not a train word: <unk>
    assert cov["splits"]["test"]["unseen_in_train"] == {"types": 1, "tokens": 2, "queries": 2, "types_with_vector": 0,
                                                        "tokens_with_vector": 0, "queries_with_vector": 0}
    train_only_emb = np.load(tmp_path / "tr" / "embeddings.npy")

    # the default: val/test words GloVe covers join the vocabulary after the training words
    params.write_text("text:\n  oov: zero\ndataset:\n  splits: {train: [t.json], test: [t.json]}\n")
    assert main(["--params", str(params), "--annotations", str(ann), "--glove", str(g), "--out", str(tmp_path / "out")]) == 0
    vocab = Vocab.load(tmp_path / "out" / "vocab.json")
    assert vocab.itos[2:5] == ["a", "man", "the"] and vocab.itos[-1] == "dog" and len(vocab) == 2 + 8 + 1
    emb = np.load(tmp_path / "out" / "embeddings.npy")
    assert emb.shape == (len(vocab), 300) and emb.dtype == np.float32 and not emb[0].any()
    assert (emb[vocab.stoi["dog"]] == 5.0).all()  # its GloVe row ("dog" is the 5th word of g.txt)
    assert np.array_equal(emb[:-1], train_only_emb)  # the training words' rows do not move
    cov = json.loads((tmp_path / "out" / "coverage.json").read_text())
    assert cov["fallback"] is False and cov["vocab_from"] == "all_splits"
    assert cov["vocab_train_words"] == 8 and cov["vocab_added_words"] == 1 and cov["added_words"] == ["dog"]
    assert cov["types"] == {"total": 8, "found": 4, "fraction": 0.5}  # of the training words
    assert cov["tokens"]["total"] == 11 and cov["tokens"]["found"] == 6
    assert cov["splits"]["train"]["all_oov"] == 1  # "a cat purrs"
    assert cov["splits"]["test"]["all_oov"] == 0  # "dog!!" now has its vector
    assert cov["splits"]["test"]["tokens"] == {"total": 6, "found": 5, "fraction": 5 / 6}  # "a" lacks one
    assert cov["splits"]["test"]["unseen_in_train"] == {"types": 1, "tokens": 2, "queries": 2, "types_with_vector": 1,
                                                        "tokens_with_vector": 2, "queries_with_vector": 2}
    assert cov["splits"]["train"]["unseen_in_train"]["types"] == 0
    assert sorted(cov["oov_words"]) == ["a", "cat", "purrs", "sits"]
    # bad inputs: no GloVe and no fallback, a missing file, a file that covers nothing
    with pytest.raises(Exception, match="glove.840B.300d.zip.*fallback_train_glove"):
        main(["--params", str(params), "--annotations", str(ann), "--out", str(tmp_path / "o2")])
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        main(["--params", str(params), "--annotations", str(ann), "--glove", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o2")])
    glove_file(tmp_path / "x.txt", {"zebra": [0.0] * 300})
    with pytest.raises(Exception, match="none of the 8 training words"):
        main(["--params", str(params), "--annotations", str(ann), "--glove", str(tmp_path / "x.txt"), "--out", str(tmp_path / "o2")])
    params.write_text("text:\n  oov: zero\n  vocab_from: train\ndataset:\n  splits: {test: [t.json], train: [t.json]}\n"  # test checked first
                      "  policy:\n    all_oov: fail\n")
    with pytest.raises(TextError, match=r"all_oov and policy 'fail': test\.json:v\[1\] \('dog!!'\)"):
        main(["--params", str(params), "--annotations", str(ann), "--glove", str(g), "--out", str(tmp_path / "o2")])
    params.write_text("text:\n  oov: zero\ndataset:\n  splits: {test: [t.json], train: [t.json]}\n"
                      "  policy:\n    all_oov: fail\n")  # "dog!!" has a vector now
    with pytest.raises(TextError, match=r"all_oov and policy 'fail': train\.json:v\[2\] \('a cat purrs'\)"):
        main(["--params", str(params), "--annotations", str(ann), "--glove", str(g), "--out", str(tmp_path / "o2")])
    assert not (tmp_path / "o2").exists()


def test_text_stage_remaps_added_words_and_takes_unk_from_training_words_only(tmp_path: Path) -> None:
    """The text stage (vocab_from: all_splits, oov: unk) on a case where an unseen word GloVe lacks
    ("zzz", 3 times) ranks before unseen words it covers ("dog", "yak", once each): "zzz" is not
    added, so "dog" and "yak" move up one id and must keep their own vectors; ``<unk>`` and the
    training words GloVe lacks get the mean of the TRAINING words' vectors only (the, man, opens,
    door: (1 + 2 + 3 + 4) / 4 = 2.5), not of the added ones (10, 20)."""
    from fian_pipeline.text import main

    d = tmp_path / "ann"
    d.mkdir()
    for split, sents in {"train": ["a man opens the door", "the man sits", "a cat purrs"],
                         "test": ["a zzz zzz opens the door", "zzz dog", "the yak"]}.items():  # fmt: skip
        pd.DataFrame({"video_id": "v", "duration": 10.0, "start": 0.0, "end": 1.0, "sentence": sents, "split": split,
                      "source": [f"{split}.json:v[{i}]" for i in range(len(sents))]}).to_parquet(d / f"{split}.parquet")  # fmt: skip
    vectors = {"the": 1.0, "man": 2.0, "opens": 3.0, "door": 4.0, "dog": 10.0, "yak": 20.0}
    g = glove_file(tmp_path / "g.txt", {w: [v] * 300 for w, v in vectors.items()})
    params = tmp_path / "p.yaml"
    params.write_text("text:\n  oov: unk\n  vocab_from: all_splits\ndataset:\n  splits: {train: [t.json], test: [t.json]}\n")
    assert main(["--params", str(params), "--annotations", str(d), "--glove", str(g), "--out", str(tmp_path / "out")]) == 0
    vocab = Vocab.load(tmp_path / "out" / "vocab.json")
    emb = np.load(tmp_path / "out" / "embeddings.npy")
    n_train = 2 + 8  # <pad> <unk> + a man the cat door opens purrs sits
    assert vocab.itos[n_train:] == ["dog", "yak"] and "zzz" not in vocab
    for word, value in vectors.items():
        assert (emb[vocab.stoi[word]] == value).all(), word  # each word its own row
    assert not emb[0].any()
    for word in ("<unk>", "a", "sits", "cat", "purrs"):
        assert (emb[vocab.stoi[word]] == 2.5).all(), word
