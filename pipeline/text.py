"""Stage ``text``: vocabulary, GloVe embedding matrix and coverage of a dataset.

    python -m fian_pipeline.text --params params/base.yaml params/datasets/<d>.yaml \
        --annotations data/interim/<d>/annotations [--glove data/raw/glove/glove.840B.300d.txt] \
        --out data/interim/<d>/text

Writes ``vocab.json`` (JSON list, 0 = <pad>, 1 = <unk>), ``embeddings.npy`` ([V, text.word_dim]
float32, row 0 zeros) and ``coverage.json``.  The vocabulary holds every word of the TRAIN split
(min count 1) and, with ``text.vocab_from: all_splits``, then the val/test words the GloVe file
covers (no label is read: frozen GloVe vectors are what the model would see for them anyway);
val/test words GloVe lacks map to <unk>.  ``coverage.json`` reports, per split, the words absent
from train and how many of them got a vector (``unseen_in_train``).

Without ``--glove``, ``text.fallback_train_glove: true`` trains GloVe vectors on the training
sentences (written to ``<out>/glove_fallback.txt`` + sidecar), with a loud warning and
``"fallback": true`` in coverage.json; otherwise the stage stops and says where to get GloVe.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fian.data import glove as fallback
from fian.data.text import (
    Vocab,
    build_embeddings,
    coverage,
    filter_sentences,
    near_duplicates,
    read_glove,
    tokenize,
    unseen_report,
    vocab_with_glove,
)
from fian.io import atomic_path, write_json
from fian_pipeline.common import StageError, load, parser, run_stage, warn_loud

log = logging.getLogger("fian.text")
# distinct words whose vectors are at least this similar are reported (coverage.json) and warned about
NEAR_DUPLICATE_COS = 0.99


def main(argv: Sequence[str] | None = None) -> int:
    p: argparse.ArgumentParser = parser("text", __doc__)
    p.add_argument("--annotations", type=Path, required=True, help="folder with <split>.parquet (annotations stage)")
    p.add_argument("--glove", type=Path, help="GloVe text file (glove.840B.300d.txt layout)")
    p.add_argument("--out", type=Path, required=True, help="output folder (vocab.json, embeddings.npy, coverage.json)")
    args = p.parse_args(argv)
    cfg = load(args)
    tc, policy = cfg.text, cfg.dataset.policy

    if "train" not in cfg.dataset.splits:
        raise StageError(f"dataset.splits has no 'train' ({list(cfg.dataset.splits)}): the vocabulary is built from it")
    splits = {}  # names from params, never from listing the folder (temp files share it)
    for s in cfg.dataset.splits:
        if not (args.annotations / f"{s}.parquet").is_file():
            raise FileNotFoundError(f"{args.annotations / f'{s}.parquet'}: table of split {s!r} not found")
        splits[s] = pd.read_parquet(args.annotations / f"{s}.parquet")
    tokens = {s: [tokenize(x, tc.lowercase) for x in df["sentence"]] for s, df in splits.items()}
    vocab = train_vocab = Vocab.build(tokens["train"], min_count=1)  # all_splits adds val/test words below

    is_fallback = False
    # what the log calls the vectors: GloVe, or the dataset's own (text.vectors_file: not GloVe)
    source = "GloVe" if args.glove is None or tc.vectors_file is None else f"{args.glove.name} (the dataset's own)"
    if args.glove is not None:
        if not args.glove.is_file():
            raise FileNotFoundError(f"{args.glove}: {'GloVe' if tc.vectors_file is None else 'word-vector'} file not found")
        glove_path = args.glove
        is_fallback = fallback.is_fallback(glove_path)
    elif tc.fallback_train_glove:
        glove_path = args.out / "glove_fallback.txt"
        warn_loud(f"OFFLINE FALLBACK: no GloVe file given; training {tc.word_dim}-d GloVe vectors on the "
                  f"{len(tokens['train'])} training sentences of {cfg.dataset.name} -> {glove_path}. These are NOT "
                  "the glove.840B.300d vectors of the paper (S3.2); results are not comparable.")
        fallback.train_fallback(tokens["train"], glove_path, dim=tc.word_dim, epochs=tc.glove_epochs,
                                window=tc.glove_window, x_max=tc.glove_x_max, lr=tc.glove_lr,
                                batch_size=tc.glove_batch_size, seed=cfg.train.seed)
        is_fallback = True
    else:
        url = tc.glove.url if tc.glove else "https://nlp.stanford.edu/data/glove.840B.300d.zip"
        raise StageError(f"no GloVe file: download it (python -m fian_pipeline.download --kind glove --out DIR, from "
                         f"{url}) and pass --glove DIR/glove.840B.300d.txt, or, offline, set "
                         "text.fallback_train_glove: true in params to train vectors on the dataset's sentences")
    if is_fallback and args.glove is not None:
        warn_loud(f"OFFLINE FALLBACK: {glove_path} is a fallback GloVe file trained on the dataset's sentences "
                  f"(see {glove_path}{fallback.SIDECAR_SUFFIX}), not glove.840B.300d.")

    added: list[str] = []
    if tc.vocab_from == "all_splits":
        others = [t for s, toks in tokens.items() if s != "train" for t in toks]
        vocab, hits, added = vocab_with_glove(train_vocab, others, glove_path, dim=tc.word_dim)
    else:
        hits = read_glove(glove_path, vocab, dim=tc.word_dim)
    if not any(i < len(train_vocab) for i in hits.vectors):
        raise StageError(f"{glove_path}: none of the {len(train_vocab) - 2} training words has a vector (wrong file?)")
    emb = build_embeddings(vocab, hits, tc.oov, seed=cfg.train.seed, stats_rows=len(train_vocab))  # [V, word_dim]

    report = {"glove": str(glove_path), "fallback": is_fallback, "dim": tc.word_dim, "glove_lines": hits.lines,
              "oov_policy": tc.oov, "vocab_from": tc.vocab_from, "vocab_size": len(vocab),
              "vocab_train_words": len(train_vocab) - 2, "vocab_added_words": len(added), "added_words": added[:50],
              **coverage(vocab, hits, tokens["train"], types_upto=len(train_vocab)), "splits": {},
              "oov_words": sorted(w for i, w in enumerate(vocab.itos) if i >= 2 and i not in hits.vectors)}
    repeated = [[w, kept, dropped] for w, kept, dropped in hits.duplicates if w in vocab.stoi]
    report["duplicate_words"] = {"count": len(repeated), "kept": "first", "examples": repeated[:20]}
    if repeated:
        shown = ", ".join(f"{w!r} (lines {a} and {b})" for w, a, b in repeated[:5])
        log.warning("%s: %d vocabulary word(s) listed more than once, e.g. %s: the first vector of each is used, "
                    "the repeats are ignored (coverage.json duplicate_words)", glove_path, len(repeated), shown)
    dups = near_duplicates(vocab, hits, threshold=NEAR_DUPLICATE_COS)
    report["near_duplicate_vectors"] = {"threshold": NEAR_DUPLICATE_COS, "pairs": len(dups),
                                        "examples": [[a, b, round(c, 4)] for a, b, c in dups[:20]]}
    if dups:
        shown = ", ".join(f"{a}/{b}" for a, b, _ in dups[:8])
        log.warning("%d word pairs have near-identical vectors (cosine >= %.2f), e.g. %s: with "
                    "model.freeze_embeddings: true the model cannot tell them apart (%s)", len(dups),
                    NEAR_DUPLICATE_COS, shown, args.out / "coverage.json")
    for split, df in splits.items():
        _, counts = filter_sentences(df["sentence"].tolist(), vocab, set(hits.vectors),
                                     empty_sentence=policy.empty_sentence, all_oov=policy.all_oov,
                                     lowercase=tc.lowercase, sources=df["source"].tolist())
        cov = coverage(vocab, hits, tokens[split])
        unseen = unseen_report(train_vocab, vocab, tokens[split])
        report["splits"][split] = {"queries": len(df), "tokens": cov["tokens"], **counts,
                                   "policy": {"empty_sentence": policy.empty_sentence, "all_oov": policy.all_oov},
                                   "unseen_in_train": unseen}
        log.info("%s: token coverage %.2f%%; empty %d, all-OOV %d (%s); %d queries hold a word absent from train, "
                 "%d of them got a vector from %s", split, 100 * cov["tokens"]["fraction"], counts["empty_sentence"],
                 counts["all_oov"], policy.all_oov, unseen["queries"], unseen["queries_with_vector"], source)
    log.info("vocab %d words; vectors from %s for %.2f%% of types, %.2f%% of train tokens%s", len(vocab) - 2, source,
             100 * report["types"]["fraction"], 100 * report["tokens"]["fraction"], " (FALLBACK)" * is_fallback)

    vocab.save(args.out / "vocab.json")
    with atomic_path(args.out / "embeddings.npy") as tmp:
        np.save(tmp, emb)
    write_json(args.out / "coverage.json", report)
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main))
