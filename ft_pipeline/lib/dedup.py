"""Conversation deduplication: exact, prefix, branch and near-duplicate (MinHash LSH).

Dedup runs in two places:

1. Per partition (``cleaned_conversations``): per-record *signatures* are computed
   (:func:`exact_hash`, :func:`context_hash`, :func:`prefix_hashes`,
   :func:`compute_signatures` + :func:`signatures_to_bytes`) and stored in Parquet.
2. Globally (``curated_dataset``): all partitions' signature columns are concatenated
   and :func:`deduplicate` removes exact, prefix, branch and near duplicates, keeping
   the best copy of each cluster.

Near-duplicate signatures use One Permutation Hashing (OPH, Li et al. 2012) with
densification (Shrivastava & Li 2014, in the "optimal" probing variant of
Shrivastava 2017): every shingle is hashed once and falls into one of ``num_perm``
bins; the per-bin minimum is the signature value, and empty bins copy a non-empty
bin chosen by a probe sequence shared by all documents. ``mean(sig_a == sig_b)`` is
then an unbiased estimator of the Jaccard similarity of the two shingle sets, at
O(shingles) cost instead of O(shingles * num_perm) for classic MinHash.

Tokenization (shared by signatures and :func:`shingles`): the text is lowercased
(``str.lower``), tokens are maximal runs of ``\\w`` characters (Python ``re``
semantics) and every decimal digit is mapped to ``"0"`` (so numbers that only differ
in their digits shingle the same). Shingles are word ``ngram``-grams; a document
with fewer than ``ngram`` (but at least one) words has a single shingle made of all
its words.

This module is pure Python + numpy/pandas/xxhash (no dagster).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, cast

import numpy as np
import pandas as pd
import xxhash

__all__ = [
    "DEFAULT_DEDUP_CONFIG",
    "DedupConfig",
    "DedupResult",
    "compute_signatures",
    "context_hash",
    "conversation_text",
    "cross_set_near_duplicates",
    "deduplicate",
    "estimated_jaccard",
    "exact_hash",
    "jaccard",
    "lsh_params",
    "prefix_hashes",
    "record_hashes",
    "shingles",
    "signatures_from_bytes",
    "signatures_to_bytes",
]

# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class DedupConfig:
    """Deduplication settings.

    Attributes:
        num_perm: signature length (number of OPH bins / minhash values). Default 128.
        ngram: word shingle size. Default 5.
        threshold: Jaccard similarity at/above which two conversations are
            near-duplicates. Default 0.8.
        bands: number of LSH bands. Default ``None``: chosen by minimising the
            false-positive + 19x false-negative areas (misses cost more than a verification) for
            ``threshold``/``num_perm``, as datasketch's ``_optimal_param`` does.
            Rows per band are ``num_perm // bands``.
        seed: seed of the signature and band hash functions. Default 1. Signatures
            computed with different seeds are not comparable.
        drop_prefix_duplicates: drop a conversation that equals the first k messages
            of another one (the prefix ending at an assistant turn); the longer one
            is kept. Default True.
        drop_branch_duplicates: among conversations sharing the same context (all
            messages but the last assistant reply) and differing in the final
            reply, keep only the best copy. Default True.
    """

    num_perm: int = 128
    ngram: int = 5
    threshold: float = 0.8
    bands: int | None = None
    seed: int = 1
    drop_prefix_duplicates: bool = True
    drop_branch_duplicates: bool = True

    def __post_init__(self) -> None:
        if self.num_perm < 1:
            raise ValueError(f"num_perm must be >= 1, got {self.num_perm}")
        if self.ngram < 1:
            raise ValueError(f"ngram must be >= 1, got {self.ngram}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.bands is not None and not 1 <= self.bands <= self.num_perm:
            raise ValueError(f"bands must be in [1, num_perm], got {self.bands}")

    def band_params(self) -> tuple[int, int]:
        """``(bands, rows)`` actually used for LSH banding."""
        if self.bands is None:
            # Candidates are verified by true Jaccard, so a false positive costs one check
            # while a false negative leaves a duplicate in the data: weigh misses 19x
            # (for 0.8 / 128 this gives 16 bands x 8 rows: 95% of pairs at J=0.8 become candidates).
            return lsh_params(self.threshold, self.num_perm, false_positive_weight=0.05, false_negative_weight=0.95)
        return self.bands, self.num_perm // self.bands


DEFAULT_DEDUP_CONFIG = DedupConfig()

# Kind labels, as they appear in DedupResult.kind / counts.
EXACT = "exact_duplicate"
PREFIX = "prefix_duplicate"
BRANCH = "branch_duplicate"
NEAR = "near_duplicate"
_KINDS = (None, EXACT, PREFIX, BRANCH, NEAR)  # index = kind code used internally

# ------------------------------------------------------------- per-record hashes


def _message_fields(message: Mapping[str, Any] | Any) -> tuple[str, str]:
    # Dicts as stored in Parquet; objects with .role/.content (records.Message) too.
    if isinstance(message, Mapping):
        role, content = message.get("role"), message.get("content")
    else:
        role, content = getattr(message, "role", None), getattr(message, "content", None)
    return ("" if role is None else str(role)), ("" if content is None else str(content))


def _encode_message(message: Mapping[str, Any]) -> bytes:
    # Length-prefixed so that no choice of content can make two different
    # conversations serialize to the same bytes (no separator to forge).
    role, content = _message_fields(message)
    return f"{len(role)}:{role}{len(content)}:{content}".encode("utf-8", "surrogatepass")


def _to_int64(h: int) -> int:
    # Parquet has no uint64-friendly story in pandas; store the same 64 bits signed.
    return h - (1 << 64) if h >= (1 << 63) else h


def conversation_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """Text used for shingling: ``"role: content"`` per message, joined by newlines.

    Role markers are kept so that the same sentence said by the user or by the
    assistant does not look identical.
    """
    parts = []
    for m in messages:
        if type(m) is dict:
            role, content = m.get("role"), m.get("content")
            if type(role) is str and type(content) is str:
                parts.append(f"{role}: {content}")  # the common case, without the generic accessor
                continue
        parts.append("{}: {}".format(*_message_fields(m)))
    return "\n".join(parts)


def exact_hash(messages: Sequence[Mapping[str, Any]]) -> int:
    """xxh3_64 of the conversation (roles + contents), as a signed int64."""
    h = xxhash.xxh3_64()
    for m in messages:
        h.update(_encode_message(m))
    return _to_int64(h.intdigest())


def context_hash(messages: Sequence[Mapping[str, Any]]) -> int | None:
    """Hash of ``messages[:-1]`` (equal to ``exact_hash(messages[:-1])``).

    ``None`` when there are fewer than 2 messages, or when the last message is not
    an assistant reply: branch duplicates are "same context, different final
    assistant reply", and conversations ending on another role are not branches.
    """
    if len(messages) < 2 or _message_fields(messages[-1])[0] != "assistant":
        return None
    return exact_hash(messages[:-1])


def prefix_hashes(messages: Sequence[Mapping[str, Any]]) -> list[int]:
    """``exact_hash`` of every proper prefix ``messages[:k]`` (k < len) ending with an assistant message."""
    # The serialization is a plain concatenation, so one streaming hash gives every
    # prefix's digest in O(total length) instead of re-hashing each prefix.
    h = xxhash.xxh3_64()
    out: list[int] = []
    for m in messages[:-1]:
        h.update(_encode_message(m))
        if _message_fields(m)[0] == "assistant":
            out.append(_to_int64(h.intdigest()))
    return out


def record_hashes(messages: Sequence[Mapping[str, Any]]) -> tuple[int, int | None, list[int]]:
    """``(exact_hash, context_hash, prefix_hashes)`` of one conversation in a single pass.

    Equal to the three functions called separately, but each message is serialized and hashed
    once: the exact hash, the context hash and every prefix hash are digests of one streaming
    hash at different messages."""
    n = len(messages)
    h = xxhash.xxh3_64()
    prefixes: list[int] = []
    context: int | None = None
    last_role = ""
    for i, m in enumerate(messages):
        role = m.get("role") if type(m) is dict else None
        content = m.get("content") if role is not None else None
        if type(role) is str and type(content) is str:
            h.update(f"{len(role)}:{role}{len(content)}:{content}".encode("utf-8", "surrogatepass"))
        else:
            role = _message_fields(m)[0]
            h.update(_encode_message(m))
        if i < n - 1:
            if role == "assistant":
                prefixes.append(_to_int64(h.intdigest()))
            if i == n - 2:
                context = h.intdigest()
        last_role = role
    exact = _to_int64(h.intdigest())
    if n < 2 or last_role != "assistant":
        context = None
    elif context is not None:
        context = _to_int64(context)
    return exact, context, prefixes


def jaccard(a: set, b: set) -> float:
    """Jaccard similarity ``|a & b| / |a | b|`` (1.0 for two empty sets)."""
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


# ------------------------------------------------------------ vectorized hashing

_U64 = np.uint64
_EMPTY = _U64(1 << 32)  # per-bin "no shingle yet" marker: above any 32-bit value
_MASK32 = _U64(0xFFFFFFFF)
_SH32 = _U64(32)
_WORD_POLY = 0x9E3779B97F4A7C15  # odd => invertible mod 2**64
_WORD_POLY_INV = pow(_WORD_POLY, -1, 1 << 64)
_LEN_SALT = _U64(0xD6E8FEB86659FD93)
# Distinct odd multipliers per position in the n-gram: makes the shingle hash
# order-sensitive while staying a cheap vectorized multiply-add.
_POS_MULT_CACHE: dict[int, np.ndarray] = {}
# Bytes per internal batch: bounds temporaries (~40 bytes of numpy per text byte)
# and keeps them cache-resident (measured fastest around 256 KiB).
_CHUNK_BYTES = 1 << 18

_NONASCII_DIGIT_RE = re.compile(r"(?![0-9])\d")
_WORD_RE = re.compile(r"\w+")


def _fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3 64-bit finalizer, in place (x must be a writable uint64 array)."""
    x ^= x >> _U64(33)
    x *= _U64(0xFF51AFD7ED558CCD)
    x ^= x >> _U64(33)
    x *= _U64(0xC4CEB9FE1A85EC53)
    x ^= x >> _U64(33)
    return x


def _seed_constant(seed: int, salt: str) -> int:
    return xxhash.xxh3_64_intdigest(f"{salt}:{seed}".encode())


def _pos_mults(n: int) -> np.ndarray:
    if n not in _POS_MULT_CACHE:
        vals = [(_seed_constant(j, "ngram-pos") | 1) for j in range(n)]
        _POS_MULT_CACHE[n] = np.array(vals, dtype=np.uint64)
    return _POS_MULT_CACHE[n]


def _build_byte_map() -> np.ndarray:
    # Byte -> normalized byte; 0 means "not a word byte". ASCII follows Python's
    # \w for ASCII ([A-Za-z0-9_]) with lowercasing and digits -> '0'. Non-ASCII
    # bytes only ever come from pre-canonicalized text (see _canonical_bytes) where
    # every non-ASCII character is a \w character, so they all count as word bytes.
    table = np.zeros(256, dtype=np.uint8)
    for c in b"abcdefghijklmnopqrstuvwxyz_":
        table[c] = c
    for c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        table[c] = c + 32
    for c in b"0123456789":
        table[c] = ord("0")
    table[0x80:] = np.arange(0x80, 0x100, dtype=np.uint8)
    return table


_BYTE_MAP = _build_byte_map()
_BYTE_MAP_TABLE = _BYTE_MAP.tobytes()  # the same map for bytes.translate (faster than a numpy gather)


class _PowerTables:
    """``P**i`` and ``P**-i`` mod 2**64 for i < size, grown on demand by doubling.

    Tables up to ``cache_limit`` entries are kept (normal batches are ~256 KiB); a
    bigger request (one huge text) is served without growing the cache, so a single
    outlier does not pin hundreds of MB for the life of the process.
    """

    def __init__(self, cache_limit: int = 1 << 22) -> None:
        self.cache_limit = cache_limit
        self.pow = np.ones(1, dtype=np.uint64)
        self.inv = np.ones(1, dtype=np.uint64)

    @staticmethod
    def _grow(pw: np.ndarray, inv: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        while len(pw) < size:
            n = len(pw)
            pw = np.concatenate([pw, pw * _U64(pow(_WORD_POLY, n, 1 << 64))])
            inv = np.concatenate([inv, inv * _U64(pow(_WORD_POLY_INV, n, 1 << 64))])
        return pw, inv

    def get(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        if size > self.cache_limit:
            return self._grow(self.pow, self.inv, size)
        if len(self.pow) < size:
            self.pow, self.inv = self._grow(self.pow, self.inv, size)
        return self.pow, self.inv


_POWERS = _PowerTables()


def _canonical_bytes(text: str) -> bytes:
    """UTF-8 bytes on which the byte-level tokenizer equals lower + ``\\w+`` + digit->0."""
    if text.isascii():
        # ASCII fast path: the byte map does lowercasing, digits and \w exactly.
        return text.encode("ascii")
    # Non-ASCII: let `re` decide what \w is, keep only words separated by spaces;
    # then every remaining non-ASCII byte belongs to a word character.
    words = " ".join(_WORD_RE.findall(text.lower()))
    words = _NONASCII_DIGIT_RE.sub("0", words)
    return words.encode("utf-8", "surrogatepass")


def _shingle_batch(texts: Sequence[str], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """Shingle hashes of a batch of texts.

    Returns ``(hashes uint64 [S], doc int64 [S])``: one entry per shingle occurrence
    (duplicates within a doc are kept; callers that need sets dedupe). Texts with no
    word produce no entry.
    """
    n_docs = len(texts)
    encoded = [_canonical_bytes(t) for t in texts]
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=n_docs)
    doc_starts = np.zeros(n_docs, dtype=np.int64)
    if n_docs > 1:
        # +1: the b" " separator, a non-word byte, so no word spans two docs.
        np.cumsum(lengths[:-1] + 1, out=doc_starts[1:])
    joined = b" ".join(encoded)
    n_bytes = len(joined)
    empty = (np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.int64))
    if n_bytes == 0:
        return empty

    mapped = np.frombuffer(joined.translate(_BYTE_MAP_TABLE), dtype=np.uint8)
    # Word starts and ends are where "is a word byte" changes (with a non-word byte before the
    # first and after the last); they alternate, so one scan of a bool array finds both.
    is_word = np.zeros(n_bytes + 2, dtype=bool)
    np.not_equal(mapped, 0, out=is_word[1:-1])
    bounds = np.flatnonzero(is_word[1:] != is_word[:-1])
    word_start = bounds[0::2]
    word_end = bounds[1::2]
    if len(word_start) == 0:
        return empty

    # Polynomial word hash via one prefix sum over the whole buffer:
    # sum_k c_k P^k over a word, shifted to the word start by P^-start. Non-word
    # bytes map to 0 and contribute nothing. uint64 arithmetic wraps mod 2**64.
    pw, inv = _POWERS.get(n_bytes + 1)
    prefix = np.empty(n_bytes + 1, dtype=np.uint64)
    prefix[0] = 0
    np.multiply(mapped, pw[:n_bytes], out=prefix[1:], dtype=np.uint64)
    np.cumsum(prefix[1:], out=prefix[1:])
    word_hash = (prefix[word_end] - prefix[word_start]) * inv[word_start]
    word_hash += (word_end - word_start).astype(np.uint64) * _LEN_SALT
    word_hash = _fmix64(word_hash)
    # Document of each word: words are in document order, so repeat each document's id by
    # its word count (a binary search per document, not per word).
    first_word = np.searchsorted(word_start, doc_starts)
    counts = np.diff(first_word, append=len(word_start))
    word_doc = np.repeat(np.arange(n_docs, dtype=np.int64), counts)

    n_words = len(word_hash)
    mult = _pos_mults(ngram)
    parts_h: list[np.ndarray] = []
    parts_d: list[np.ndarray] = []

    # Full n-grams: rolling weighted sum of n consecutive word hashes, kept only
    # where the n words belong to the same document.
    if n_words >= ngram:
        span = n_words - ngram + 1
        acc = word_hash[:span] * mult[0]
        for j in range(1, ngram):
            acc += word_hash[j : j + span] * mult[j]
        valid = word_doc[ngram - 1 :] == word_doc[:span]
        acc = acc[valid]
        acc ^= _U64(ngram)
        parts_h.append(acc)
        parts_d.append(word_doc[:span][valid])

    # Documents shorter than ngram words: one shingle made of all their words.
    short = np.flatnonzero((counts > 0) & (counts < ngram))
    if len(short):
        first_word = np.zeros(n_docs, dtype=np.int64)
        np.cumsum(counts[:-1], out=first_word[1:])
        first = first_word[short]
        size = counts[short]
        acc = np.zeros(len(short), dtype=np.uint64)
        for j in range(ngram - 1):
            sel = size > j
            acc[sel] += word_hash[first[sel] + j] * mult[j]
        acc ^= size.astype(np.uint64)
        parts_h.append(acc)
        parts_d.append(short.astype(np.int64))

    hashes = np.concatenate(parts_h) if len(parts_h) > 1 else parts_h[0]
    docs = np.concatenate(parts_d) if len(parts_d) > 1 else parts_d[0]
    return _fmix64(hashes), docs


def shingles(text: str, ngram: int) -> set[int]:
    """The true shingle set of ``text`` (same tokenization and hashing as the signatures)."""
    hashes, _ = _shingle_batch([text], ngram)
    return set(hashes.tolist())


def _iter_chunks(texts: Sequence[str], max_bytes: int) -> Iterable[tuple[int, int]]:
    start, size = 0, 0
    for i, t in enumerate(texts):
        size += len(t) + 1
        if size >= max_bytes:
            yield start, i + 1
            start, size = i + 1, 0
    if start < len(texts):
        yield start, len(texts)


_PROBES = 8  # hashed probes per empty bin before the exact rank-table fallback


@functools.lru_cache(maxsize=8)
def _probe_ranks(k: int, seed: int) -> np.ndarray:
    """int32 [k, k]: rank of bin i in empty bin j's fallback probe order (j itself first)."""
    rng = np.random.default_rng(_seed_constant(seed, "densify-order"))
    keys = rng.random((k, k))
    keys[np.arange(k), np.arange(k)] = -1.0  # a bin is its own first choice
    return np.argsort(np.argsort(keys, axis=1), axis=1).astype(np.int32)


def _densify(bins: np.ndarray, seed: int) -> np.ndarray:
    """Fill empty OPH bins so that every position stays a Jaccard estimator.

    Optimal densification (Shrivastava, ICML 2017): an empty bin ``j`` copies the
    first non-empty bin of a probe sequence that depends only on ``j`` (never on the
    document). For two documents, the first bin of the sequence that is non-empty in
    their union decides: they collide iff that bin's minimum lies in both sets, which
    has probability J. Unlike rotation (Shrivastava & Li 2014), borrowing is spread
    over random bins, keeping the variance near classic MinHash for short texts.

    The sequence is ``_PROBES`` hashed bins, then every bin in a fixed per-``j``
    random order (``_probe_ranks``) resolved in one vectorized argmin, so a very short
    document (e.g. 1 non-empty bin of 128) costs O(k) per empty bin rather than an
    unbounded probing loop. A document with no shingle at all gets 0xFFFFFFFF bins.
    """
    k = bins.shape[1]
    empty = bins == _EMPTY
    rows = np.flatnonzero(empty.any(axis=1))
    if len(rows):
        original = bins[rows]
        filled = original.copy()
        sub_empty = empty[rows]
        all_empty = sub_empty.all(axis=1)
        filled[all_empty] = _MASK32
        r_idx, j_idx = np.nonzero(sub_empty & ~all_empty[:, None])
        j64 = j_idx.astype(np.uint64) * _U64(0xA24BAED4963EE407) + _U64(_seed_constant(seed, "densify"))
        for attempt in range(1, _PROBES + 1):
            if not len(r_idx):
                break
            step = _U64((attempt * 0x9FB21C651E98DF25) & 0xFFFFFFFFFFFFFFFF)
            probe = _fmix64(j64 + step)
            src = (((probe >> _SH32) * _U64(k)) >> _SH32).astype(np.int64)
            hit = ~sub_empty[r_idx, src]
            filled[r_idx[hit], j_idx[hit]] = original[r_idx[hit], src[hit]]
            miss = ~hit
            r_idx, j_idx, j64 = r_idx[miss], j_idx[miss], j64[miss]
        if len(r_idx):
            ranks = _probe_ranks(k, seed)
            rows_per_slice = max(1, (1 << 22) // k)  # bounds the [rows, k] rank temporaries
            for lo in range(0, len(r_idx), rows_per_slice):
                r, j = r_idx[lo : lo + rows_per_slice], j_idx[lo : lo + rows_per_slice]
                cand = np.where(sub_empty[r], np.int32(k), ranks[j])
                src = np.argmin(cand, axis=1)
                filled[r, j] = original[r, src]
        bins[rows] = filled
    return bins.astype(np.uint32)


def compute_signatures(texts: Sequence[str], config: DedupConfig = DEFAULT_DEDUP_CONFIG) -> np.ndarray:
    """OPH+densification minhash signatures, ``uint32 [len(texts), num_perm]``.

    A document's signature depends only on its own text and ``config`` (not on the
    batch it is computed in). ``(sig_a == sig_b).mean()`` estimates the Jaccard
    similarity of the two texts' :func:`shingles`.
    """
    k = config.num_perm
    out = np.empty((len(texts), k), dtype=np.uint32)
    seed_c = _U64(_seed_constant(config.seed, "oph"))
    k64 = _U64(k)
    for lo, hi in _iter_chunks(texts, _CHUNK_BYTES):
        hashes, docs = _shingle_batch(texts[lo:hi], config.ngram)
        x = _fmix64(hashes ^ seed_c)
        # High 32 bits pick the bin (multiply-shift: uniform for any k), low 32 bits
        # are the value; the finalizer makes the two halves independent.
        bins = ((x >> _SH32) * k64) >> _SH32
        key = docs * k + bins.astype(np.int64)
        table = np.full((hi - lo) * k, _EMPTY, dtype=np.uint64)
        np.minimum.at(table, key, x & _MASK32)
        out[lo:hi] = _densify(table.reshape(hi - lo, k), config.seed)
    return out


def signatures_to_bytes(sig: np.ndarray) -> list[bytes]:
    """One little-endian uint32 blob per row (Parquet binary column)."""
    sig = np.ascontiguousarray(sig, dtype="<u4")
    if sig.ndim != 2:
        raise ValueError(f"expected a 2-D signature array, got shape {sig.shape}")
    raw = sig.tobytes()
    width = sig.shape[1] * 4
    return [raw[i : i + width] for i in range(0, len(raw), width)] if width else [b""] * len(sig)


def signatures_from_bytes(blobs: Sequence[bytes], num_perm: int, copy: bool = True) -> np.ndarray:
    """Inverse of :func:`signatures_to_bytes`: ``uint32 [len(blobs), num_perm]``.

    ``copy=False`` (internal) returns a read-only view over one joined buffer.
    """
    n = len(blobs)
    if n == 0:
        return np.empty((0, num_perm), dtype=np.uint32)
    if not copy:
        raw = b"".join(blobs if isinstance(blobs, list) else list(blobs))
        if len(raw) != n * num_perm * 4:
            raise ValueError(f"minhash blobs do not hold {num_perm} uint32 values each")
        return np.frombuffer(raw, dtype="<u4").reshape(n, num_perm)
    out = np.empty((n, num_perm), dtype=np.uint32)
    width = num_perm * 4
    # Decoded in slices straight into the output: one 1M-row join plus a copy would
    # double peak memory (and page-fault time) for ~0.5 GB of signatures.
    step = 1 << 16
    for lo in range(0, n, step):
        part = blobs[lo : lo + step]
        raw = b"".join(part if isinstance(part, list) else list(part))
        if len(raw) != len(part) * width:
            bad = next(i for i, b in enumerate(part) if len(b) != width)
            raise ValueError(f"minhash blob {lo + bad} does not hold {num_perm} uint32 values")
        out[lo : lo + len(part)] = np.frombuffer(raw, dtype="<u4").reshape(-1, num_perm)
    return out


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray | float:
    """Signature-estimated Jaccard: fraction of equal positions (row-wise for 2-D input)."""
    eq = np.asarray(sig_a) == np.asarray(sig_b)
    return eq.mean(axis=-1)


# ------------------------------------------------------------------------ LSH


@functools.lru_cache(maxsize=256)
def lsh_params(
    threshold: float, num_perm: int, false_positive_weight: float = 0.5, false_negative_weight: float = 0.5
) -> tuple[int, int]:
    """``(bands, rows)`` minimising the weighted FP area + FN area, as datasketch.

    FP area = integral over s in [0, threshold] of P(candidate | s) and FN area =
    integral over [threshold, 1] of 1 - P(candidate | s), with
    P(candidate | s) = 1 - (1 - s**r)**b, over all b*r <= num_perm. Integrals use
    64-point Gauss-Legendre quadrature (smooth integrands: matches scipy's quad).
    """
    nodes, weights = np.polynomial.legendre.leggauss(64)
    half_fp = threshold / 2.0
    s_fp = half_fp * nodes + half_fp
    half_fn = (1.0 - threshold) / 2.0
    s_fn = half_fn * nodes + (threshold + 1.0) / 2.0
    best, opt = float("inf"), (1, num_perm)
    # Same iteration order and strict '<' as datasketch, so ties resolve the same way.
    for b in range(1, num_perm + 1):
        r = np.arange(1, num_perm // b + 1, dtype=np.float64)[:, None]
        fp = half_fp * ((1.0 - (1.0 - s_fp**r) ** b) @ weights)
        fn = half_fn * (((1.0 - s_fn**r) ** b) @ weights)
        err = false_positive_weight * fp + false_negative_weight * fn
        i = int(np.argmin(err))
        if err[i] < best:
            best, opt = float(err[i]), (b, i + 1)
    return opt


_SIG_STEP = 1 << 13  # signature rows per LSH hashing slice (keeps temporaries in cache)


def _signature_slices(source: np.ndarray | Sequence[bytes], num_perm: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(offset, uint32 [rows, num_perm])`` slices of an array or of minhash blobs.

    Blobs are decoded slice by slice (a zero-copy view over one small join), so the
    full signature matrix of a 1M-row frame (~0.5 GB) is never materialized.
    """
    if isinstance(source, np.ndarray) and source.dtype != object:
        for lo in range(0, len(source), _SIG_STEP):
            yield lo, source[lo : lo + _SIG_STEP]
        return
    for lo in range(0, len(source), _SIG_STEP):
        # Here ``source`` holds blobs: an object array of bytes or a list.
        yield lo, signatures_from_bytes(cast("Sequence[bytes]", source[lo : lo + _SIG_STEP]), num_perm, copy=False)


def _band_hash_matrix(source: np.ndarray | Sequence[bytes], n: int, config: DedupConfig) -> np.ndarray:
    """uint64 [bands, n]: one hash per band and row (vectorized multiply-add + finalizer)."""
    bands, rows = config.band_params()
    rng = np.random.default_rng(_seed_constant(config.seed, "lsh-bands"))
    mults = rng.integers(0, 2**63, size=(bands, rows), dtype=np.uint64) * _U64(2) + _U64(1)
    out = np.empty((bands, n), dtype=np.uint64)
    block = np.empty((_SIG_STEP, rows), dtype=np.uint64)
    for lo, sig in _signature_slices(source, config.num_perm):
        if sig.shape[1] != config.num_perm:
            raise ValueError(f"signature width {sig.shape[1]} does not match num_perm={config.num_perm}")
        blk = block[: len(sig)]
        for b in range(bands):
            # Row-wise over each row's contiguous band slice, into a reused buffer.
            np.multiply(sig[:, b * rows : (b + 1) * rows], mults[b], out=blk)
            np.sum(blk, axis=1, dtype=np.uint64, out=out[b, lo : lo + len(sig)])
    for b in range(bands):
        out[b] += _U64((b * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
        _fmix64(out[b])
    return out


class _Bucketer:
    """Groups rows of equal band hash, reusing its buffers across bands.

    The row index is packed into the low bits of the hash so that one in-place SIMD
    ``sort`` of uint64 groups equal hashes *and* orders each bucket by row index:
    O(n log n) with a tiny constant, no argsort, no hash table. The hash keeps
    64 - bits(n) bits; a spurious collision only adds a candidate that verification
    rejects.
    """

    def __init__(self, n: int) -> None:
        self.nbits = max(1, int(n - 1).bit_length())
        self.low = _U64((1 << self.nbits) - 1)
        self.rows = np.arange(n, dtype=np.uint64)
        self.packed = np.empty(n, dtype=np.uint64)
        self.keys = np.empty(n, dtype=np.uint64)

    def buckets(self, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Members of buckets with >= 2 rows: (row index int64 [M], bucket-start mask [M]),
        ordered by bucket then row index."""
        np.bitwise_and(h, ~self.low, out=self.packed)
        self.packed |= self.rows
        self.packed.sort()
        np.right_shift(self.packed, _U64(self.nbits), out=self.keys)
        same = self.keys[1:] == self.keys[:-1]  # same[p]: position p+1 continues p's bucket
        member = np.zeros(len(h), dtype=bool)
        member[1:] |= same
        member[:-1] |= same
        pos = np.flatnonzero(member)
        idx = (self.packed[pos] & self.low).astype(np.int64)
        start = np.ones(len(pos), dtype=bool)
        start[1:] = ~same[pos[1:] - 1]
        return idx, start


def _candidate_pairs(source: np.ndarray | Sequence[bytes], n: int, config: DedupConfig) -> np.ndarray:
    """Unique candidate pairs ``int64 [P, 2]`` (i < j) from LSH banding.

    Members of a bucket are chained (consecutive in row order) rather than paired
    all-with-all, so a bucket of m rows costs m - 1 pairs; union-find over verified
    chain links still merges the whole bucket when its members are near-duplicates.
    """
    if n < 2:
        return np.empty((0, 2), dtype=np.int64)
    hashes = _band_hash_matrix(source, n, config)
    bucketer = _Bucketer(n)
    found = []
    for h in hashes:
        idx, start = bucketer.buckets(h)
        link = np.flatnonzero(~start)
        if len(link):
            found.append(idx[link - 1] * n + idx[link])  # idx ascending within a bucket
    if not found:
        return np.empty((0, 2), dtype=np.int64)
    keys = np.unique(np.concatenate(found))
    return np.stack([keys // n, keys % n], axis=1)


def _pair_estimates(sig_a: np.ndarray, sig_b: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    out = np.empty(len(pairs), dtype=np.float64)
    step = 1 << 16  # bounds the [step, num_perm] comparison temporaries
    for lo in range(0, len(pairs), step):
        p = pairs[lo : lo + step]
        out[lo : lo + step] = (sig_a[p[:, 0]] == sig_b[p[:, 1]]).mean(axis=1)
    return out


def cross_set_near_duplicates(
    sig_a: np.ndarray, sig_b: np.ndarray, config: DedupConfig = DEFAULT_DEDUP_CONFIG
) -> list[tuple[int, int, float]]:
    """Near-duplicate pairs across two sets (split leakage check).

    Returns sorted ``(i, j, estimated_jaccard)`` with ``i`` a row of ``sig_a``, ``j`` a
    row of ``sig_b``, that share an LSH bucket and have estimated Jaccard >=
    ``config.threshold``. Linear banding: in a bucket with rows of both sets, each
    b-row is paired with the bucket's first a-row and each a-row with its first
    b-row (not all a x b pairs), so every leaking row is reported at least once.
    """
    sig_a = np.asarray(sig_a, dtype=np.uint32)
    sig_b = np.asarray(sig_b, dtype=np.uint32)
    na, nb = len(sig_a), len(sig_b)
    if na == 0 or nb == 0:
        return []
    if sig_a.shape[1] != config.num_perm or sig_b.shape[1] != config.num_perm:
        raise ValueError("signature width does not match config.num_perm")
    n = na + nb
    hashes = _band_hash_matrix(np.concatenate([sig_a, sig_b]), n, config)
    bucketer = _Bucketer(n)
    found = []
    for h in hashes:
        idx, start = bucketer.buckets(h)
        if not len(idx):
            continue
        starts = np.flatnonzero(start)
        group = np.cumsum(start) - 1  # bucket number per member
        is_b = idx >= na
        n_a = np.bincount(group, weights=~is_b, minlength=len(starts)).astype(np.int64)
        size = np.diff(np.append(starts, len(idx)))
        mixed = (n_a > 0) & (n_a < size)
        if not mixed.any():
            continue
        # Within a bucket rows are sorted, so a-rows come first: the first a-row is at
        # the bucket start and the first b-row right after the a-rows.
        first_a = idx[starts]
        first_b = idx[np.minimum(starts + n_a, len(idx) - 1)]
        in_mixed = mixed[group]
        sel_b = in_mixed & is_b
        sel_a = in_mixed & ~is_b
        pa = np.concatenate([first_a[group[sel_b]], idx[sel_a]])
        pb = np.concatenate([idx[sel_b], first_b[group[sel_a]]]) - na
        found.append(pa * nb + pb)
    if not found:
        return []
    keys = np.unique(np.concatenate(found))
    pairs = np.stack([keys // nb, keys % nb], axis=1)
    est = _pair_estimates(sig_a, sig_b, pairs)
    ok = est >= config.threshold
    return [(int(i), int(j), float(e)) for (i, j), e in zip(pairs[ok], est[ok])]


def _components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components (label = smallest member) of an edge list over ``n`` nodes.

    Vectorized union-find: hook each edge's larger root under the smaller one, then
    pointer-jump to full compression; repeat until every edge is inside one root.
    Labels only ever decrease, so no cycles can form.
    """
    parent = np.arange(n, dtype=np.int64)
    if len(pairs) == 0:
        return parent
    u, v = pairs[:, 0], pairs[:, 1]
    while True:
        ru, rv = parent[u], parent[v]
        if np.array_equal(ru, rv):
            return parent
        low = np.minimum(ru, rv)
        np.minimum.at(parent, ru, low)
        np.minimum.at(parent, rv, low)
        while True:
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                break
            parent = nxt


# ---------------------------------------------------------------- deduplicate


@dataclass
class DedupResult:
    """Outcome of :func:`deduplicate`, aligned with the input frame's rows.

    Attributes:
        keep: bool [N], True for rows kept.
        kind: per row, None if kept, else "exact_duplicate" | "prefix_duplicate" |
            "branch_duplicate" | "near_duplicate".
        duplicate_of: per row, conversation_id of the kept copy it duplicates (None if kept).
        cluster_id: int64 [N]; rows of one duplicate cluster (any kind, transitively)
            share an id, the kept row's index. Use it to keep clusters in one split.
        counts: rows removed per kind (all four kinds present).
        candidate_pairs: unique LSH candidate pairs examined.
        verified_pairs: candidate pairs whose (true or estimated) Jaccard passed.
    """

    keep: np.ndarray
    kind: list[str | None]
    duplicate_of: list[str | None]
    cluster_id: np.ndarray
    counts: dict[str, int]
    candidate_pairs: int
    verified_pairs: int


# Keys of a record's unknown fields (kept as JSON in ``metadata``) that say whether people
# preferred this reply, as logs and preference datasets spell it (HH-RLHF-style chosen/rejected,
# thumbs, accepted/regenerated). Values: booleans, or the strings below.
_PREFERENCE_FLAGS = {
    "chosen": 1,
    "preferred": 1,
    "is_chosen": 1,
    "is_preferred": 1,
    "accepted": 1,
    "rejected": -1,
    "is_rejected": -1,
    # The user asked for another answer to this reply: they regenerated away from it.
    "regenerated": -1,
}
_PREFERENCE_LABEL_KEYS = ("label", "preference", "thumbs", "feedback", "vote")
_PREFERENCE_WORDS = {
    "chosen": 1,
    "preferred": 1,
    "accepted": 1,
    "good": 1,
    "up": 1,
    "thumbs_up": 1,
    "thumbsup": 1,
    "positive": 1,
    "like": 1,
    "rejected": -1,
    "bad": -1,
    "down": -1,
    "thumbs_down": -1,
    "thumbsdown": -1,
    "negative": -1,
    "dislike": -1,
}


def preference_signal(metadata: str | dict | None) -> int:
    """+1 when the record marks its reply as preferred (``chosen: true``, ``thumbs: "up"``,
    ``label: "chosen"``, ...), -1 when it marks it as rejected, 0 when it says nothing (or both)."""
    if metadata is None or (isinstance(metadata, float) and metadata != metadata):
        return 0
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except ValueError:
            return 0
    if not isinstance(metadata, dict):
        return 0
    votes = set()
    for key, value in metadata.items():
        name = str(key).lower()
        if name in _PREFERENCE_FLAGS and isinstance(value, bool):
            votes.add(_PREFERENCE_FLAGS[name] if value else -_PREFERENCE_FLAGS[name])
        elif name in _PREFERENCE_LABEL_KEYS and isinstance(value, str):
            word = _PREFERENCE_WORDS.get(value.strip().lower().replace("-", "_").replace(" ", "_"))
            if word is not None:
                votes.add(word)
        elif name in _PREFERENCE_LABEL_KEYS and isinstance(value, bool):
            votes.add(1 if value else -1)
    return votes.pop() if len(votes) == 1 else 0


class _Ranking:
    """ "Best copy" order, every quality signal before any tie-break: higher rating (missing =
    3.5), then preferred over unmarked over rejected (``preference``: a chosen/thumbs marker, see
    ``preference_signal``), then not edited (missing between), then faster response (missing =
    slowest); ties broken by the smaller conversation_id, then the smaller row index."""

    def __init__(self, frame: pd.DataFrame, ids: np.ndarray) -> None:
        n = len(frame)
        self.ids = ids
        self.neg_rating = -_float_column(frame, "rating", n, fill=3.5)
        self.neg_preference = -_float_column(frame, "preference", n, fill=0.0)
        self.edited = _edited_rank(frame, n)
        self.response = _float_column(frame, "response_time_ms", n, fill=np.inf)

    def keys(self, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        """lexsort keys, least significant first."""
        return (
            rows,
            self.ids[rows],
            self.response[rows],
            self.edited[rows],
            self.neg_preference[rows],
            self.neg_rating[rows],
        )

    def best_per_group(self, rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """For rows grouped by ``labels``, the best row of each row's group (aligned with rows)."""
        order = np.lexsort((*self.keys(rows), labels))
        sorted_labels = labels[order]
        is_first = np.ones(len(order), dtype=bool)
        is_first[1:] = sorted_labels[1:] != sorted_labels[:-1]
        group = np.cumsum(is_first) - 1
        best_sorted = rows[order][is_first][group]
        best = np.empty(len(rows), dtype=np.int64)
        best[order] = best_sorted
        return best


def best_copy_per_group(frame: pd.DataFrame, labels: Sequence[Any]) -> np.ndarray:
    """Index of the best copy in each row's group (rows with equal ``labels``), by the same
    "best copy" order as :func:`deduplicate`. ``frame`` needs ``conversation_id`` and may have
    ``rating``, ``preference``, ``edited`` and ``response_time_ms``."""
    ids = frame["conversation_id"].astype(str).to_numpy(dtype=object)
    codes, _ = pd.factorize(pd.Series(list(labels)))
    return _Ranking(frame, ids).best_per_group(np.arange(len(frame), dtype=np.int64), codes)


def _float_column(frame: pd.DataFrame, name: str, n: int, fill: float) -> np.ndarray:
    if name not in frame.columns:
        return np.full(n, fill, dtype=np.float64)
    values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return np.where(np.isnan(values), fill, values)


def _edited_rank(frame: pd.DataFrame, n: int) -> np.ndarray:
    # not edited (0) before unknown (0.5) before edited (1): unknown is neutral.
    if "edited" not in frame.columns:
        return np.full(n, 0.5)
    col = frame["edited"]
    try:
        flags = col.astype("boolean")
    except (TypeError, ValueError):
        # Unusual encodings (e.g. "yes"/"no" strings): fall back to truthiness.
        flags = pd.array([None if pd.isna(v) else bool(v) for v in col.tolist()], dtype="boolean")
    missing = np.asarray(flags.isna())
    values = np.asarray(flags.fillna(False), dtype=bool)
    return np.where(missing, 0.5, values.astype(np.float64))


def _groups_of_duplicates(keys: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows (and their keys) whose key occurs more than once among ``rows``."""
    if len(rows) < 2:
        return rows[:0], keys[:0]
    # A plain sort (SIMD, no index array) finds the few repeated values; only rows
    # holding one of them are gathered. Much cheaper than argsort of all rows.
    ordered = np.sort(keys)
    repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    if len(repeated) == 0:
        return rows[:0], keys[:0]
    return _rows_with_values(keys, rows, repeated)


def _rows_with_values(keys: np.ndarray, rows: np.ndarray, sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows (and keys) whose key is in ``sorted_values`` (sorted, unique)."""
    hit = _contains(sorted_values, keys)
    return rows[hit], keys[hit]


def _contains(sorted_values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Mask of ``keys`` present in ``sorted_values`` (binary search; fast when either
    side is small or ``keys`` is sorted too)."""
    if len(sorted_values) == 0 or len(keys) == 0:
        return np.zeros(len(keys), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_values, keys), len(sorted_values) - 1)
    return sorted_values[pos] == keys


def _nullable_int64(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(values int64, present mask) of a nullable integer column (Int64 / int / object)."""
    if pd.api.types.is_integer_dtype(series.dtype):
        arr = series.astype("Int64").array
    else:
        # object column of ints and None/NaN; never go through float64 (it would
        # silently round 64-bit hashes).
        arr = pd.array([None if pd.isna(v) else int(v) for v in series.tolist()], dtype="Int64")
    present = ~np.asarray(arr.isna())
    return arr.to_numpy(dtype=np.int64, na_value=0), present


def _flatten_prefix_hashes(column: pd.Series, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hash value, owner row, owner's number of prefix hashes) for ``rows``' lists."""
    cells = column.to_numpy(dtype=object)[rows].tolist()
    try:
        lengths = np.fromiter(map(len, cells), dtype=np.int64, count=len(cells))
    except TypeError:
        # Missing cells arrive as None or NaN depending on how the frame was built.
        cells = [c if hasattr(c, "__len__") else () for c in cells]
        lengths = np.fromiter(map(len, cells), dtype=np.int64, count=len(cells))
    # fromiter (not concatenate): an empty cell read back as a float array would
    # otherwise promote every 64-bit hash to float64.
    values = np.fromiter(chain.from_iterable(cells), dtype=np.int64, count=int(lengths.sum()))
    return values, np.repeat(rows, lengths), np.repeat(lengths, lengths)


def _verify_true_jaccard(
    pairs: np.ndarray,
    load_texts: Callable[[np.ndarray], list[str]],
    ngram: int,
    threshold: float,
    max_rows: int = 20_000,
) -> np.ndarray:
    """Mask of pairs (global row indices) whose true shingle Jaccard >= threshold.

    Pairs are processed in blocks touching at most ~max_rows distinct rows, so only a
    bounded number of texts/shingle sets is in memory at once.
    """
    ok = np.zeros(len(pairs), dtype=bool)
    step = max(1, max_rows // 2)
    for lo in range(0, len(pairs), step):
        block = pairs[lo : lo + step]
        rows = np.unique(block)
        texts = load_texts(rows)
        if len(texts) != len(rows):
            raise ValueError(f"load_texts returned {len(texts)} texts for {len(rows)} rows")
        sets: list[set[int]] = [set() for _ in rows]
        for clo, chi in _iter_chunks(texts, _CHUNK_BYTES):
            hashes, docs = _shingle_batch(texts[clo:chi], ngram)
            order = np.argsort(docs, kind="stable")
            bounds = np.searchsorted(docs[order], np.arange(chi - clo + 1))
            h_sorted = hashes[order]
            for d in range(chi - clo):
                sets[clo + d] = set(h_sorted[bounds[d] : bounds[d + 1]].tolist())
        pos = np.searchsorted(rows, block)
        ok[lo : lo + len(block)] = [jaccard(sets[a], sets[b]) >= threshold for a, b in pos.tolist()]
    return ok


def deduplicate(
    frame: pd.DataFrame,
    config: DedupConfig = DEFAULT_DEDUP_CONFIG,
    load_texts: Callable[[np.ndarray], list[str]] | None = None,
) -> DedupResult:
    """Global dedup over the concatenated signature columns.

    Stages, each on the rows still kept by the previous ones:

    1. exact: rows with equal ``exact_hash``; the best copy is kept.
    2. prefix (``drop_prefix_duplicates``): a row whose ``exact_hash`` is in another
       row's ``prefix_hashes`` is dropped in favour of the longest such row.
    3. branch (``drop_branch_duplicates``): rows with equal non-null ``context_hash``;
       the best copy is kept.
    4. near: LSH banding over ``minhash``; candidates verified by true shingle Jaccard
       (``load_texts`` given: only candidate rows are loaded) or by the signature
       estimate; verified pairs are merged with union-find; the best copy of each
       component is kept.

    "Best" = higher rating (missing = 3.5), then not edited, then faster
    ``response_time_ms``, then smaller ``conversation_id``. ``duplicate_of`` and
    ``cluster_id`` point at the finally kept row even across stages (e.g. an exact
    duplicate of a row later removed as a near duplicate).
    """
    n = len(frame)
    counts = {EXACT: 0, PREFIX: 0, BRANCH: 0, NEAR: 0}
    if n == 0:
        return DedupResult(
            keep=np.zeros(0, dtype=bool),
            kind=[],
            duplicate_of=[],
            cluster_id=np.zeros(0, dtype=np.int64),
            counts=counts,
            candidate_pairs=0,
            verified_pairs=0,
        )
    ids = frame["conversation_id"].astype(str).to_numpy(dtype=object)
    rank = _Ranking(frame, ids)
    kind = np.zeros(n, dtype=np.int8)  # index into _KINDS; 0 = kept
    parent = np.arange(n, dtype=np.int64)  # removed row -> row it duplicates

    def remove(rows: np.ndarray, to: np.ndarray, code: int) -> None:
        drop = rows != to
        kind[rows[drop]] = code
        parent[rows[drop]] = to[drop]

    # 1. exact
    all_rows = np.arange(n, dtype=np.int64)
    exact = frame["exact_hash"].to_numpy(dtype=np.int64)
    rows, keys = _groups_of_duplicates(exact, all_rows)
    if len(rows):
        remove(rows, rank.best_per_group(rows, keys), _KINDS.index(EXACT))

    # 2. prefix
    if config.drop_prefix_duplicates and "prefix_hashes" in frame.columns:
        alive = np.flatnonzero(kind == 0)
        values, owner, owner_len = _flatten_prefix_hashes(frame["prefix_hashes"], alive)
        # Exact hashes are unique among alive rows, so each matched value names exactly
        # one row to drop (the target).
        alive_exact = exact[alive]
        sorted_exact = np.sort(alive_exact)
        # Which prefix hashes are some alive row's exact hash: both sides sorted (fast
        # SIMD sorts, monotone search), then a cache-resident lookup of the few hits.
        sorted_values = np.sort(values)
        matched = np.unique(sorted_values[_contains(sorted_exact, sorted_values)])
        keep_idx, _ = _rows_with_values(values, np.arange(len(values)), matched)
        values, owner, owner_len = values[keep_idx], owner[keep_idx], owner_len[keep_idx]
        target_rows, target_keys = _rows_with_values(alive_exact, alive, matched)
        order = np.argsort(target_keys)
        target = target_rows[order][np.searchsorted(target_keys[order], values)]
        not_self = target != owner  # only a hash collision could make these equal
        owner, owner_len, target = owner[not_self], owner_len[not_self], target[not_self]
        if len(target):
            # Keeper per dropped row: the longest container (most assistant turns; it
            # can never itself be a prefix of another row), then the best copy.
            order = np.lexsort((*rank.keys(owner), -owner_len, target))
            t_sorted = target[order]
            first = np.ones(len(order), dtype=bool)
            first[1:] = t_sorted[1:] != t_sorted[:-1]
            remove(t_sorted[first], owner[order][first], _KINDS.index(PREFIX))

    # 3. branch
    if config.drop_branch_duplicates and "context_hash" in frame.columns:
        ctx, present = _nullable_int64(frame["context_hash"])
        alive = np.flatnonzero((kind == 0) & present)
        rows, keys = _groups_of_duplicates(ctx[alive], alive)
        if len(rows):
            remove(rows, rank.best_per_group(rows, keys), _KINDS.index(BRANCH))

    # 4. near
    alive = np.flatnonzero(kind == 0)
    candidate_pairs = verified_pairs = 0
    if len(alive) >= 2:
        blobs = frame["minhash"].to_numpy(dtype=object)[alive]
        local = _candidate_pairs(blobs, len(alive), config)
        candidate_pairs = len(local)
        if len(local):
            if load_texts is None:
                # Decode only the signatures of candidate rows.
                rows = np.unique(local)
                sig = signatures_from_bytes(blobs[rows], config.num_perm, copy=False)
                ok = _pair_estimates(sig, sig, np.searchsorted(rows, local)) >= config.threshold
            else:
                ok = _verify_true_jaccard(alive[local], load_texts, config.ngram, config.threshold)
            local = local[ok]
            verified_pairs = len(local)
        if len(local):
            involved = np.unique(local)
            comp = _components(len(alive), local)[involved]
            rows = alive[involved]
            remove(rows, rank.best_per_group(rows, comp), _KINDS.index(NEAR))

    # Follow chains (exact dup -> row later removed as near dup -> its keeper, ...)
    # so duplicate_of / cluster_id name the row that is finally kept.
    while True:
        nxt = parent[parent]
        if np.array_equal(nxt, parent):
            break
        parent = nxt

    keep = kind == 0
    # Object-array gathers build the per-row lists in C (1M-row list comprehensions
    # are a visible share of the whole dedup).
    kinds = np.array(_KINDS, dtype=object)[kind].tolist()
    for code, name in enumerate(_KINDS):
        if name is not None:  # code 0: kept
            counts[name] = int(np.count_nonzero(kind == code))
    dup_ids = ids[parent]
    dup_ids[keep] = None
    duplicate_of = dup_ids.tolist()
    return DedupResult(
        keep=keep,
        kind=kinds,
        duplicate_of=duplicate_of,
        cluster_id=parent,
        counts=counts,
        candidate_pairs=int(candidate_pairs),
        verified_pairs=int(verified_pairs),
    )
