"""Tokens, the vocabulary and the GloVe embedding matrix (Section 3.2).

* :func:`tokenize` -- lowercase, words / numbers / hyphenated words, English clitics split as in
  the Penn Treebank (``person's`` -> ``person 's``, ``don't`` -> ``do n't``, the tokenization of
  the Common Crawl GloVe vocabulary); punctuation-only tokens are dropped.
* :class:`Vocab` -- index 0 ``<pad>``, 1 ``<unk>``, then the words, most frequent first (ties
  alphabetical), so the same sentences always give the same ids.  Saved as a JSON list.
* :func:`read_glove` -- streams a GloVe text file (``word v1 ... v300`` per line; in
  glove.840B.300d some "words" contain spaces, so the LAST ``dim`` fields are the vector), keeping
  only the vocabulary's rows; the whole file is never loaded.
* :func:`vocab_with_glove` -- the training words, then the words met only in val/test that GloVe
  covers (issue 11.4: with frozen GloVe vectors giving them their vectors uses no label; words
  GloVe lacks stay ``<unk>`` there).  The training words keep their ids (a prefix).
* :func:`build_embeddings` -- the ``[V, dim]`` float32 matrix with the OOV policy, row 0 zeros.
* :func:`filter_sentences` -- the ``empty_sentence`` / ``all_oov`` policies on encoded queries.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

PAD, UNK = "<pad>", "<unk>"
SPECIALS = (PAD, UNK)

# alternatives, tried in order: clitic n't, a word before n't, clitics 's 're 'll ..., words
# (letters/digits, inner hyphens).  Anything else (punctuation, underscores) is skipped.
_WORD = r"[^\W_]+(?:-[^\W_]+)*"
_TOKEN = re.compile(rf"n't\b|{_WORD}(?=n't\b)|'(?:s|re|ve|ll|d|m)\b|{_WORD}")


class TextError(ValueError):
    """Bad text input (a GloVe line, a vocabulary file, a failing policy): names the file and record."""


def tokenize(sentence: str, lowercase: bool = True) -> list[str]:
    """Split ``sentence`` into word tokens; punctuation-only tokens are dropped."""
    if lowercase:
        sentence = sentence.lower()
    sentence = sentence.replace("\u2019", "'")
    return _TOKEN.findall(sentence)


class Vocab:
    """Token <-> id.  ``Vocab(tokens)``: ``<pad>`` = 0 and ``<unk>`` = 1 come first (added if absent)."""

    def __init__(self, tokens: Iterable[str]) -> None:
        words = [t for t in tokens]
        if words[:2] == list(SPECIALS):
            words = words[2:]
        itos = [*SPECIALS, *words]
        stoi: dict[str, int] = {}
        for i, t in enumerate(itos):
            if not isinstance(t, str) or not t:
                raise TextError(f"vocabulary entry {i} must be a non-empty string, got {t!r}")
            if t in stoi:
                raise TextError(f"vocabulary entry {i}: {t!r} appears twice (first at {stoi[t]})")
            stoi[t] = i
        self.itos: list[str] = itos
        self.stoi: dict[str, int] = stoi

    @classmethod
    def build(cls, sentences: Iterable[Sequence[str]], min_count: int = 1) -> Vocab:
        """From tokenized sentences: words seen >= ``min_count`` times, by count desc then alphabet."""
        counts = Counter(t for s in sentences for t in s)
        for s in SPECIALS:
            counts.pop(s, None)
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(words)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: object) -> bool:
        return token in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def encode(self, tokens: Sequence[str], max_len: int | None = None) -> list[int]:
        """Ids of ``tokens`` (unknown -> 1), truncated to ``max_len``; not padded."""
        ids = [self.stoi.get(t, 1) for t in tokens]
        return ids if max_len is None else ids[:max_len]

    def save(self, path: str | Path) -> None:
        from fian.io import write_text

        write_text(path, json.dumps(self.itos, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        from fian.io import read_json

        path = Path(path)
        data = read_json(path, TextError)
        if not isinstance(data, list) or data[:2] != list(SPECIALS):
            raise TextError(f"{path}: expected a JSON list starting with {list(SPECIALS)}")
        try:
            return cls(data)
        except TextError as e:
            raise TextError(f"{path}: {e}") from None


def encode_sentences(sentences: Sequence[str], vocab: Vocab, max_len: int,
                     lowercase: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Token ids ``[Q, max_len]`` int64 (0-padded, truncated) and lengths ``[Q]`` int64."""
    ids = np.zeros((len(sentences), max_len), dtype=np.int64)
    lengths = np.zeros(len(sentences), dtype=np.int64)
    for i, s in enumerate(sentences):
        row = vocab.encode(tokenize(s, lowercase), max_len)
        ids[i, : len(row)] = row
        lengths[i] = len(row)
    return ids, lengths


@dataclass
class GloveHits:
    """What :func:`read_glove` found: ``vectors[i]`` for vocabulary ids in ``found``."""

    dim: int
    vectors: dict[int, np.ndarray] = field(default_factory=dict)
    lines: int = 0
    # vocabulary words the file lists more than once: (word, line of the vector kept, line ignored)
    duplicates: list[tuple[str, int, int]] = field(default_factory=list)


# a decimal number as GloVe writes one (not "nan"/"inf": those are words too)
_DECIMAL = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def read_glove(path: str | Path, vocab: Vocab, dim: int = 300) -> GloveHits:
    """Stream a GloVe text file and keep the vectors of ``vocab``'s words.

    A word is matched exactly; a lowercase vocabulary word missing from a cased file (840B) takes
    the vector of its first cased variant (``Person`` for ``person``).  A line with fewer than
    ``dim + 1`` fields, a line of a word and more than ``dim`` numbers (a file of another
    dimension; a "word" with spaces, as 840B's ``. . .``, is allowed only when its extra fields are
    not numbers), or a vector field that is not a finite number (nan, inf), raises
    :class:`TextError` naming the file and the line (only the vectors of vocabulary words are parsed).
    A vocabulary word listed twice keeps its first vector; each repeat is counted in
    ``hits.duplicates`` (the text stage warns and reports them in coverage.json).
    """
    path = Path(path)
    hits = GloveHits(dim)
    exact: dict[int, int] = {}  # vocabulary id -> line of its exact-match vector
    n = 0
    with open(path, encoding="utf-8", errors="replace") as f:  # a stray byte only spoils its word
        for n, line in enumerate(f, start=1):  # noqa: B007 (n is read after the loop)
            line = line.rstrip("\n\r ")  # a trailing space is not a field
            spaces = line.count(" ")
            if spaces < dim:
                if not line.strip():
                    continue
                raise TextError(f"{path}:{n}: expected a word and {dim} numbers, got {spaces} field(s) "
                                f"after the word (wrong dimension?)")
            if spaces == dim:
                word = line[: line.index(" ")]
            else:  # rare (a handful of 840B's 2.2M lines): a word with spaces, or too many numbers
                word = line.rsplit(" ", dim)[0]
                head, *extra = word.split(" ")
                if all(_DECIMAL.fullmatch(x) for x in extra):
                    raise TextError(f"{path}:{n}: {head!r} is followed by {spaces} numbers, expected {dim} "
                                    f"(text.word_dim): a word-vector file of another dimension, or a broken line")
            i = vocab.stoi.get(word)
            lower = False
            if i is None:
                i = vocab.stoi.get(word.lower())
                lower = True
                if i is None or i in hits.vectors:
                    continue
            elif i in exact:
                hits.duplicates.append((word, exact[i], n))
                continue
            if i < len(SPECIALS):
                continue
            try:
                with np.errstate(over="ignore"):  # an overflow to inf is reported below
                    vec = np.array(line.rsplit(" ", dim)[1:], dtype=np.float32)
            except ValueError:
                raise TextError(f"{path}:{n}: vector of {word!r} has a field that is not a number") from None
            if not np.isfinite(vec).all():  # nan, inf, or a number beyond float32 (1e39)
                j = int(np.flatnonzero(~np.isfinite(vec))[0])
                raise TextError(f"{path}:{n}: vector of {word!r}: field {j + 1} is {line.rsplit(' ', dim)[1 + j]!r}, "
                                "not a finite float32")
            hits.vectors[i] = vec
            if not lower:
                exact[i] = n
    hits.lines = n
    if n == 0:
        raise TextError(f"{path}: empty GloVe file")
    return hits


def unseen_words(vocab: Vocab, sentences: Iterable[Sequence[str]]) -> list[str]:
    """Words of ``sentences`` that ``vocab`` lacks, most frequent first (ties alphabetical)."""
    counts = Counter(t for s in sentences for t in s if t not in vocab.stoi)
    return sorted(counts, key=lambda w: (-counts[w], w))


def vocab_with_glove(train: Vocab, others: Iterable[Sequence[str]], glove: str | Path,
                     dim: int = 300) -> tuple[Vocab, GloveHits, list[str]]:
    """``(vocab, hits, added)``: ``train``'s words (same ids), then the words of ``others`` (the
    tokenized val/test sentences) that ``train`` lacks and the GloVe file ``glove`` covers, most
    frequent first.  ``hits`` holds the vectors by the new ids; ``added`` the words added.  The
    file is streamed once (:func:`read_glove`).
    """
    extra = unseen_words(train, others)
    candidates = Vocab([*train.itos, *extra])
    found = read_glove(glove, candidates, dim=dim)
    added = [w for w in extra if candidates.stoi[w] in found.vectors]
    vocab = Vocab([*train.itos, *added])
    hits = GloveHits(dim, {vocab.stoi[candidates.itos[i]]: v for i, v in found.vectors.items()}, found.lines,
                     [d for d in found.duplicates if d[0] in vocab.stoi])
    return vocab, hits, added


def build_embeddings(vocab: Vocab, hits: GloveHits, oov: str, seed: int = 0,
                     stats_rows: int | None = None) -> np.ndarray:
    """``[len(vocab), dim]`` float32.  Row 0 (``<pad>``) zeros; words GloVe lacks and ``<unk>``:

    * ``zero``: zeros;
    * ``unk``: one shared vector, the mean of the found vectors (what ``<unk>`` means);
    * ``random``: each its own draw of N(0, s^2), s = std of the found vectors, seeded.

    ``stats_rows``: only the found vectors among the first ``stats_rows`` rows (the training words
    of :func:`vocab_with_glove`) define that mean and std, so adding val/test words changes no
    other row.
    """
    dim = hits.dim
    emb = np.zeros((len(vocab), dim), dtype=np.float32)
    found = np.zeros(len(vocab), dtype=bool)
    for i, v in hits.vectors.items():
        emb[i] = v
        found[i] = True
    missing = ~found
    missing[0] = False
    known = emb[: len(vocab) if stats_rows is None else stats_rows][found[:stats_rows]]
    if oov == "unk":
        emb[missing] = known.mean(0) if len(known) else 0.0
    elif oov == "random":
        std = float(known.std()) if len(known) else 0.1
        rng = np.random.default_rng(seed)
        emb[missing] = rng.normal(0.0, std or 0.1, size=(int(missing.sum()), dim)).astype(np.float32)
    elif oov != "zero":
        raise TextError(f"text.oov must be unk, zero or random, got {oov!r}")
    return emb


def coverage(vocab: Vocab, hits: GloveHits, sentences: Iterable[Sequence[str]],
             types_upto: int | None = None) -> dict[str, Any]:
    """Share of vocabulary types (the first ``types_upto`` entries: the training words) and of
    running tokens that GloVe covers."""
    upto = len(vocab) if types_upto is None else types_upto
    words = upto - len(SPECIALS)
    found_types = sum(1 for i in hits.vectors if len(SPECIALS) <= i < upto)
    total = found = 0
    for toks in sentences:
        for t in toks:
            total += 1
            found += vocab.stoi.get(t, 1) in hits.vectors
    return {
        "types": {"total": words, "found": found_types, "fraction": found_types / words if words else 0.0},
        "tokens": {"total": total, "found": found, "fraction": found / total if total else 0.0},
    }


def unseen_report(train: Vocab, vocab: Vocab, sentences: Sequence[Sequence[str]]) -> dict[str, int]:
    """Words of one split that the training split lacks: types, tokens and queries, all of them and
    those that ``vocab`` (:func:`vocab_with_glove`) gave a vector (they would be ``<unk>`` with a
    train-only vocabulary)."""
    types: set[str] = set()
    gained: set[str] = set()
    tokens = tokens_gained = queries = queries_gained = 0
    for toks in sentences:
        new = [t for t in toks if t not in train.stoi]
        got = [t for t in new if t in vocab.stoi]
        types.update(new)
        gained.update(got)
        tokens += len(new)
        tokens_gained += len(got)
        queries += bool(new)
        queries_gained += bool(got)
    return {"types": len(types), "tokens": tokens, "queries": queries, "types_with_vector": len(gained),
            "tokens_with_vector": tokens_gained, "queries_with_vector": queries_gained}


def near_duplicates(vocab: Vocab, hits: GloveHits, threshold: float = 0.99,
                    max_words: int = 2000) -> list[tuple[str, str, float]]:
    """Pairs of distinct words whose vectors have cosine similarity >= ``threshold``, most similar first.

    Frozen vectors that coincide make the words indistinguishable to the model (e.g. GloVe trained
    on a corpus where "red" and "blue" occur in exactly the same contexts).  Only the ``max_words``
    most frequent words with a vector are compared (``vocab`` is ordered by frequency).
    """
    ids = sorted(hits.vectors)[:max_words]
    if len(ids) < 2:
        return []
    m = np.stack([np.asarray(hits.vectors[i], dtype=np.float64) for i in ids])  # [N, dim]
    norm = np.linalg.norm(m, axis=1, keepdims=True)
    unit = np.divide(m, norm, out=np.zeros_like(m), where=norm > 0)
    sim = unit @ unit.T  # [N, N]
    a, b = np.nonzero(np.triu(sim >= threshold, k=1))
    pairs = [(vocab.itos[ids[i]], vocab.itos[ids[j]], float(sim[i, j])) for i, j in zip(a, b, strict=True)]
    return sorted(pairs, key=lambda p: -p[2])


def filter_sentences(sentences: Sequence[str], vocab: Vocab, known: set[int] | np.ndarray, *,
                     empty_sentence: str, all_oov: str, lowercase: bool = True,
                     sources: Sequence[str] | None = None) -> tuple[np.ndarray, dict[str, int]]:
    """Apply ``dataset.policy.empty_sentence`` / ``all_oov`` to queries: keep mask ``[Q]`` and counts.

    ``empty``: no token survives tokenization.  ``all_oov``: tokens exist but none has a word
    vector (absent from the vocabulary or from GloVe).  ``known``: the ids with a GloVe vector
    (a set, or a boolean mask over the vocabulary).  A ``fail`` policy raises :class:`TextError`
    naming the first offending records (``sources`` when given, else row numbers).
    """
    if isinstance(known, np.ndarray):
        known = set(np.flatnonzero(known).tolist())
    keep = np.ones(len(sentences), dtype=bool)
    bad: dict[str, list[int]] = {"empty_sentence": [], "all_oov": []}
    for q, s in enumerate(sentences):
        toks = tokenize(s, lowercase)
        if not toks:
            bad["empty_sentence"].append(q)
        elif not any(vocab.stoi.get(t, 1) in known for t in toks):
            bad["all_oov"].append(q)
    for case, policy in (("empty_sentence", empty_sentence), ("all_oov", all_oov)):
        rows = bad[case]
        if rows and policy == "fail":
            where = [sources[r] if sources is not None else f"row {r}" for r in rows[:5]]
            raise TextError(f"{len(rows)} quer(ies) with {case} and policy 'fail': "
                            + "; ".join(f"{w} ({sentences[r]!r})" for w, r in zip(where, rows, strict=False)))
        keep[rows] = False
    return keep, {k: len(v) for k, v in bad.items()}


def known_mask(vocab: Vocab, oov_words: Iterable[str]) -> np.ndarray:
    """``[len(vocab)]`` bool: True for the words that have a GloVe vector (``coverage.json`` lists
    the others under ``oov_words``); the specials are never known."""
    mask = np.ones(len(vocab), dtype=bool)
    mask[: len(SPECIALS)] = False
    for w in oov_words:
        if w in vocab.stoi:
            mask[vocab.stoi[w]] = False
    return mask
