"""Dedup: per-record hashes, OPH minhash signatures, LSH and the global deduplicate()."""

import time

import numpy as np
import pandas as pd
import pytest

from ft_pipeline.lib.dedup import (
    DEFAULT_DEDUP_CONFIG,
    DedupConfig,
    compute_signatures,
    context_hash,
    conversation_text,
    cross_set_near_duplicates,
    deduplicate,
    estimated_jaccard,
    exact_hash,
    jaccard,
    lsh_params,
    prefix_hashes,
    shingles,
    signatures_from_bytes,
    signatures_to_bytes,
)

_LETTERS = list("abcdefghijklmnopqrstuvwxyz")
_VOCAB_RNG = np.random.default_rng(12345)
# Letters only: digits are folded to "0" by the tokenizer, so digit-based words would collide.
VOCAB = sorted({"".join(_VOCAB_RNG.choice(_LETTERS, _VOCAB_RNG.integers(3, 10))) for _ in range(4000)})


def words(rng, n):
    return " ".join(rng.choice(VOCAB, n))


def make_conv(rng, turns=4, n_words=120, system=False):
    messages = [{"role": "system", "content": "You are a helpful assistant."}] if system else []
    for t in range(turns):
        messages.append({"role": "user" if t % 2 == 0 else "assistant", "content": words(rng, n_words)})
    return messages


def perturb(messages, rng, n_changes):
    """Replace n_changes random words (anywhere in the conversation)."""
    out = [dict(m, content=m["content"].split()) for m in messages]
    for _ in range(n_changes):
        m = out[rng.integers(len(out))]
        m["content"][rng.integers(len(m["content"]))] = str(rng.choice(VOCAB))
    return [dict(m, content=" ".join(m["content"])) for m in out]


def build_frame(records, config=DEFAULT_DEDUP_CONFIG):
    """records: list of dicts with conversation_id, messages and optional rating/edited/response_time_ms."""
    texts = [conversation_text(r["messages"]) for r in records]
    sig = compute_signatures(texts, config)
    frame = pd.DataFrame(
        {
            "conversation_id": [r["conversation_id"] for r in records],
            "exact_hash": np.array([exact_hash(r["messages"]) for r in records], dtype=np.int64),
            "context_hash": pd.array([context_hash(r["messages"]) for r in records], dtype="Int64"),
            "prefix_hashes": [prefix_hashes(r["messages"]) for r in records],
            "minhash": signatures_to_bytes(sig),
            "rating": pd.array([r.get("rating") for r in records], dtype="Float64"),
            "edited": pd.array([r.get("edited") for r in records], dtype="boolean"),
            "response_time_ms": pd.array([r.get("response_time_ms") for r in records], dtype="Float64"),
        }
    )
    return frame, texts


def loader(texts, calls=None):
    def load(indices):
        if calls is not None:
            calls.append(np.asarray(indices).copy())
        return [texts[int(i)] for i in indices]

    return load


def removed(result, frame):
    ids = frame["conversation_id"].tolist()
    return {ids[i]: (result.kind[i], result.duplicate_of[i]) for i in np.flatnonzero(~result.keep)}


# ----------------------------------------------------------------- record hashes


def test_exact_hash_is_int64_and_sensitive_to_roles_and_content():
    conv = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]
    h = exact_hash(conv)
    assert isinstance(h, int) and -(2**63) <= h < 2**63
    assert exact_hash([dict(m) for m in conv]) == h
    assert exact_hash([{"role": "assistant", "content": "Hi there"}, conv[1]]) != h
    assert exact_hash([conv[0], {"role": "assistant", "content": "Hello?"}]) != h
    # No separator forgery: moving text across the message boundary changes the hash.
    assert exact_hash([{"role": "user", "content": "ab"}, {"role": "user", "content": "c"}]) != exact_hash(
        [{"role": "user", "content": "a"}, {"role": "user", "content": "bc"}]
    )
    # Signed: many random hashes span both signs (fits Parquet int64).
    rng = np.random.default_rng(0)
    signs = {exact_hash(make_conv(rng, 2, 5)) < 0 for _ in range(64)}
    assert signs == {True, False}


def test_context_and_prefix_hashes():
    rng = np.random.default_rng(1)
    conv = make_conv(rng, turns=6, n_words=10, system=True)  # sys, u, a, u, a, u, a
    assert context_hash(conv) == exact_hash(conv[:-1])
    assert context_hash(conv[:1]) is None
    assert context_hash(conv[:-1]) is None  # ends with a user turn: not a branch candidate
    # Proper prefixes ending with an assistant message: [:3], [:5] (not the full conv).
    assert prefix_hashes(conv) == [exact_hash(conv[:3]), exact_hash(conv[:5])]
    assert prefix_hashes(conv[:3]) == []
    assert prefix_hashes([]) == []


def test_conversation_text_has_role_markers():
    text = conversation_text([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}])
    assert "user" in text and "assistant" in text and "Hi" in text and "Yo" in text


# ------------------------------------------------------------------- signatures


def test_shingles_tokenization_and_short_documents():
    # Lowercase, \w+ tokens, digits folded to 0, punctuation ignored.
    assert shingles("Hello, World! Price 42 today.", 2) == shingles("hello world price 17 today", 2)
    assert shingles("hello world price today", 2) != shingles("hello world price 17 today", 2)
    # Non-ASCII follows Python's \w (accents are letters, the dash is not).
    assert shingles("Café — Ünïcode test", 2) == shingles("café ünïcode TEST", 2)
    assert len(shingles("one two three four five six", 5)) == 2
    # Shorter than n words: a single shingle of all words; none without words.
    assert len(shingles("two words", 5)) == 1
    assert shingles("two words", 5) != shingles("words two", 5)
    assert shingles("?!", 5) == set()
    assert jaccard(set(), set()) == 1.0 and jaccard({1, 2}, {2, 3}) == pytest.approx(1 / 3)


def test_signatures_shape_roundtrip_batch_independence_and_seed():
    rng = np.random.default_rng(2)
    texts = [conversation_text(make_conv(rng)) for _ in range(30)] + ["", "short text"]
    sig = compute_signatures(texts)
    assert sig.shape == (32, 128) and sig.dtype == np.uint32
    # A document's signature does not depend on the batch it was computed in.
    assert np.array_equal(compute_signatures(texts[7:9]), sig[7:9])
    assert np.array_equal(compute_signatures(texts[::-1])[::-1], sig)
    # Identical texts -> identical signatures; other seed -> other values.
    assert np.array_equal(compute_signatures([texts[3]])[0], sig[3])
    assert estimated_jaccard(sig[3], sig[3]) == 1.0
    assert estimated_jaccard(sig[:2], sig[1:3]).shape == (2,)
    assert not np.array_equal(compute_signatures(texts[:1], DedupConfig(seed=2)), sig[:1])
    assert compute_signatures([], DedupConfig(num_perm=64)).shape == (0, 64)
    blobs = signatures_to_bytes(sig)
    assert all(isinstance(b, bytes) and len(b) == 128 * 4 for b in blobs)
    assert np.array_equal(signatures_from_bytes(blobs, 128), sig)
    with pytest.raises(ValueError):
        signatures_from_bytes(blobs[:2], 64 + 1)


def test_signature_estimates_jaccard():
    rng = np.random.default_rng(3)
    errors, truths = [], []
    for i in range(60):
        # Long and short documents: short ones (40 words ~ 36 shingles for 128 bins)
        # exercise densification of empty bins.
        base = list(rng.choice(VOCAB, 500 if i % 2 else 40))
        # Word replacement rate p keeps a 5-shingle with s = (1-p)^5, so J = s / (2 - s):
        # aim at J uniform in 0.3..0.95.
        target = rng.uniform(0.3, 0.95)
        frac = 1 - (2 * target / (1 + target)) ** (1 / 5)
        other = [w if rng.random() > frac else str(rng.choice(VOCAB)) for w in base]
        a, b = " ".join(base), " ".join(other)
        true = jaccard(shingles(a, 5), shingles(b, 5))
        sig = compute_signatures([a, b])
        errors.append((sig[0] == sig[1]).mean() - true)
        truths.append(true)
    errors, truths = np.array(errors), np.array(truths)
    assert truths.min() < 0.4 and truths.max() > 0.85  # the range is really covered
    # Standard deviation at K=128 is <= ~0.045: +-0.1 for 95 % of pairs, never 0.15,
    # and no bias.
    assert np.quantile(np.abs(errors), 0.95) <= 0.1
    assert np.abs(errors).max() <= 0.15
    assert abs(errors.mean()) <= 0.02


def test_lsh_params_match_datasketch():
    assert lsh_params(0.75, 256) == (21, 12)  # datasketch's documented optimum
    bands, rows = lsh_params(0.8, 128)
    assert bands * rows <= 128
    # The S-curve threshold (1/b)^(1/r) sits near the requested threshold.
    assert abs((1 / bands) ** (1 / rows) - 0.8) < 0.1
    assert DedupConfig(bands=16).band_params() == (16, 8)


# ------------------------------------------------------------------- deduplicate


def test_empty_and_single_row():
    frame, _ = build_frame([])
    res = deduplicate(frame)
    assert len(res.keep) == 0 and res.kind == [] and res.counts == dict.fromkeys(res.counts, 0)
    assert set(res.counts) == {"exact_duplicate", "near_duplicate", "prefix_duplicate", "branch_duplicate"}
    frame, texts = build_frame([{"conversation_id": "only", "messages": make_conv(np.random.default_rng(4))}])
    res = deduplicate(frame, load_texts=loader(texts))
    assert res.keep.tolist() == [True] and res.kind == [None] and res.duplicate_of == [None]
    assert res.cluster_id.tolist() == [0]


def test_exact_duplicates_keep_best_rated_copy():
    rng = np.random.default_rng(5)
    conv, other = make_conv(rng), make_conv(rng)
    records = [
        {"conversation_id": "a", "messages": conv, "rating": 3},
        {"conversation_id": "b", "messages": conv, "rating": 5},
        {"conversation_id": "c", "messages": conv, "rating": None},
        {"conversation_id": "d", "messages": other, "rating": 1},
    ]
    frame, texts = build_frame(records)
    res = deduplicate(frame, load_texts=loader(texts))
    assert res.keep.tolist() == [False, True, False, True]
    assert removed(res, frame) == {"a": ("exact_duplicate", "b"), "c": ("exact_duplicate", "b")}
    assert res.counts["exact_duplicate"] == 2
    assert res.cluster_id.tolist() == [1, 1, 1, 3]


def test_near_duplicates_removed_and_same_topic_kept():
    rng = np.random.default_rng(6)
    base = make_conv(rng)
    near = perturb(base, rng, 3)  # a few words changed in ~480
    same_topic = perturb(base, rng, 160)  # shares many words but J < 0.5
    unrelated = make_conv(rng)
    records = [
        {"conversation_id": "base", "messages": base, "rating": 4},
        {"conversation_id": "near", "messages": near, "rating": 5},
        {"conversation_id": "topic", "messages": same_topic},
        {"conversation_id": "other", "messages": unrelated},
    ]
    frame, texts = build_frame(records)
    assert jaccard(shingles(texts[0], 5), shingles(texts[1], 5)) > 0.9
    assert jaccard(shingles(texts[0], 5), shingles(texts[2], 5)) < 0.5
    for load in (loader(texts), None):  # true-Jaccard verification and estimate-only
        res = deduplicate(frame, load_texts=load)
        assert removed(res, frame) == {"base": ("near_duplicate", "near")}  # better rated kept
        assert res.counts["near_duplicate"] == 1 and res.verified_pairs == 1
        assert res.candidate_pairs >= 1
        assert res.cluster_id.tolist() == [1, 1, 2, 3]


def test_true_jaccard_verification_rejects_what_the_estimate_alone_would_accept():
    # With threshold just above the true similarity, the loader-based check decides.
    rng = np.random.default_rng(7)
    base = make_conv(rng)
    near = perturb(base, rng, 8)
    frame, texts = build_frame([{"conversation_id": "x", "messages": base}, {"conversation_id": "y", "messages": near}])
    true = jaccard(shingles(texts[0], 5), shingles(texts[1], 5))
    cfg = DedupConfig(threshold=min(1.0, true + 0.005), bands=32)
    assert deduplicate(frame, cfg, load_texts=loader(texts)).keep.all()
    cfg = DedupConfig(threshold=true - 0.005, bands=32)
    assert deduplicate(frame, cfg, load_texts=loader(texts)).keep.sum() == 1


def test_load_texts_only_loads_candidate_rows():
    rng = np.random.default_rng(8)
    records = [{"conversation_id": f"c{i:03d}", "messages": make_conv(rng, 2, 60)} for i in range(200)]
    records.append({"conversation_id": "dup", "messages": perturb(records[10]["messages"], rng, 1)})
    frame, texts = build_frame(records)
    calls = []
    res = deduplicate(frame, DedupConfig(bands=32), load_texts=loader(texts, calls))
    loaded = set(np.concatenate(calls).tolist())
    assert loaded == {10, 200}
    # Equal metadata: the smaller conversation_id is kept.
    assert res.counts["near_duplicate"] == 1 and res.duplicate_of[200] == "c010"


def test_prefix_duplicates():
    rng = np.random.default_rng(9)
    long_conv = make_conv(rng, turns=6, n_words=40)
    prefix = long_conv[:2]
    records = [
        {"conversation_id": "A", "messages": prefix, "rating": 5},  # better rated, still dropped
        {"conversation_id": "B", "messages": long_conv, "rating": 2},
        {"conversation_id": "C", "messages": long_conv[:4], "rating": 5},  # also a prefix of B
        {"conversation_id": "D", "messages": long_conv[:3]},  # ends with a user turn: not a prefix dup
    ]
    frame, texts = build_frame(records)
    cfg = DedupConfig(threshold=0.99)  # keep near-dup out of this test (C is similar to B)
    res = deduplicate(frame, cfg, load_texts=loader(texts))
    assert removed(res, frame) == {"A": ("prefix_duplicate", "B"), "C": ("prefix_duplicate", "B")}
    assert res.cluster_id.tolist() == [1, 1, 1, 3]
    res = deduplicate(frame, DedupConfig(threshold=0.99, drop_prefix_duplicates=False), load_texts=loader(texts))
    assert res.keep.all()


def test_branch_duplicates():
    rng = np.random.default_rng(10)
    context = [{"role": "user", "content": words(rng, 20)}]
    replies = [words(rng, 150) for _ in range(3)]
    records = [
        {"conversation_id": f"r{i}", "messages": context + [{"role": "assistant", "content": reply}], **meta}
        for i, (reply, meta) in enumerate(
            zip(replies, [{"rating": 4, "edited": True}, {"rating": 4, "edited": False}, {"rating": 2}])
        )
    ]
    records.append({"conversation_id": "z", "messages": make_conv(rng, 2, 40)})
    frame, texts = build_frame(records)
    res = deduplicate(frame, load_texts=loader(texts))
    assert removed(res, frame) == {"r0": ("branch_duplicate", "r1"), "r2": ("branch_duplicate", "r1")}
    assert res.counts == {"exact_duplicate": 0, "near_duplicate": 0, "prefix_duplicate": 0, "branch_duplicate": 2}
    assert res.cluster_id.tolist() == [1, 1, 1, 3]
    res = deduplicate(frame, DedupConfig(drop_branch_duplicates=False), load_texts=loader(texts))
    assert res.keep.all()


def test_best_copy_priority_and_tie_breaking_is_deterministic():
    rng = np.random.default_rng(11)
    conv = make_conv(rng, 2, 30)

    def kept(metas):
        records = [{"conversation_id": cid, "messages": conv, **meta} for cid, meta in metas]
        order = rng.permutation(len(records))
        frame, _ = build_frame([records[i] for i in order])
        res = deduplicate(frame)
        assert res.keep.sum() == 1
        return frame["conversation_id"].iloc[int(np.flatnonzero(res.keep)[0])]

    # Missing rating is neutral (3.5): above 3, below 4.
    assert kept([("x", {"rating": 3}), ("y", {"rating": None})]) == "y"
    assert kept([("x", {"rating": 4}), ("y", {"rating": None})]) == "x"
    # Then not edited, then faster response, then the smallest id; frame order never matters.
    assert kept([("a", {"rating": 5, "edited": True}), ("b", {"rating": 5, "edited": False})]) == "b"
    assert kept([("a", {"response_time_ms": 900}), ("b", {"response_time_ms": 300}), ("c", {})]) == "b"
    for _ in range(5):
        assert kept([("m", {}), ("k", {}), ("q", {})]) == "k"


def test_deduplicate_is_deterministic():
    rng = np.random.default_rng(12)
    records = []
    for i in range(40):
        conv = make_conv(rng, 4, 50)
        records.append({"conversation_id": f"c{i}", "messages": conv, "rating": float(rng.integers(1, 6))})
        if i % 3 == 0:
            records.append({"conversation_id": f"n{i}", "messages": perturb(conv, rng, 2)})
        if i % 5 == 0:
            records.append({"conversation_id": f"e{i}", "messages": conv})
    frame, texts = build_frame(records)
    # 32 bands x 4 rows: LSH recall ~1 at J ~ 0.9 (the default 9 x 13 finds ~93 %), so
    # the expected counts below do not depend on hash luck.
    cfg = DedupConfig(bands=32)
    first = deduplicate(frame, cfg, load_texts=loader(texts))
    second = deduplicate(frame, cfg, load_texts=loader(texts))
    assert first.kind == second.kind and first.duplicate_of == second.duplicate_of
    assert np.array_equal(first.cluster_id, second.cluster_id)
    assert first.counts["near_duplicate"] == 14 and first.counts["exact_duplicate"] == 8
    assert first.keep.sum() == 40


def test_chains_across_stages_point_at_the_final_keeper():
    rng = np.random.default_rng(13)
    conv = make_conv(rng)
    near = perturb(conv, rng, 2)
    records = [
        {"conversation_id": "e1", "messages": conv, "rating": 3},
        {"conversation_id": "e2", "messages": conv, "rating": 4},  # keeps the exact group...
        {"conversation_id": "n1", "messages": near, "rating": 5},  # ...then loses to this near dup
    ]
    frame, texts = build_frame(records)
    res = deduplicate(frame, load_texts=loader(texts))
    assert removed(res, frame) == {"e1": ("exact_duplicate", "n1"), "e2": ("near_duplicate", "n1")}
    assert res.cluster_id.tolist() == [2, 2, 2]


def _random_signature_frame(sig):
    n = len(sig)
    return pd.DataFrame(
        {
            "conversation_id": [f"r{i:06d}" for i in range(n)],
            "exact_hash": np.arange(n, dtype=np.int64),
            "context_hash": pd.array([None] * n, dtype="Int64"),
            "prefix_hashes": [[] for _ in range(n)],
            "minhash": signatures_to_bytes(sig),
            "rating": np.full(n, np.nan),
            "edited": pd.array([None] * n, dtype="boolean"),
            "response_time_ms": np.full(n, np.nan),
        }
    )


def test_huge_bucket_stays_linear_and_fast():
    rng = np.random.default_rng(14)
    n = 5000
    bands, rows = DEFAULT_DEDUP_CONFIG.band_params()
    sig = rng.integers(0, 2**32, size=(n, 128), dtype=np.uint32)
    sig[:, :rows] = 7  # every row lands in the same bucket of band 0
    frame = _random_signature_frame(sig)
    start = time.perf_counter()
    res = deduplicate(frame)
    elapsed = time.perf_counter() - start
    assert res.keep.all()
    assert res.candidate_pairs == n - 1  # chained, not n*(n-1)/2
    assert elapsed < 1.0
    # The same bucket made of real near duplicates collapses to one row via the chain.
    sig[:] = sig[0]
    start = time.perf_counter()
    res = deduplicate(_random_signature_frame(sig))
    assert time.perf_counter() - start < 1.0
    assert res.keep.sum() == 1 and res.counts["near_duplicate"] == n - 1
    assert set(res.cluster_id.tolist()) == {0}


def test_cross_set_near_duplicates_finds_the_planted_pair_only():
    rng = np.random.default_rng(15)
    sig_a = rng.integers(0, 2**32, size=(300, 128), dtype=np.uint32)
    sig_b = rng.integers(0, 2**32, size=(200, 128), dtype=np.uint32)
    sig_b[17] = sig_a[42]
    sig_b[17, rng.choice(128, 10, replace=False)] = 1  # estimated J = 118/128
    sig_b[50, :20] = sig_a[3, :20]  # shares a couple of bands, J ~ 0.16: not reported
    pairs = cross_set_near_duplicates(sig_a, sig_b, DEFAULT_DEDUP_CONFIG)
    assert [(i, j) for i, j, _ in pairs] == [(42, 17)]
    assert pairs[0][2] == pytest.approx(118 / 128)
    assert cross_set_near_duplicates(sig_a[:0], sig_b, DEFAULT_DEDUP_CONFIG) == []


def test_cross_set_many_identical_rows_is_linear():
    rng = np.random.default_rng(16)
    row = rng.integers(0, 2**32, size=128, dtype=np.uint32)
    sig_a = np.tile(row, (3000, 1))
    sig_b = np.tile(row, (3000, 1))
    start = time.perf_counter()
    pairs = cross_set_near_duplicates(sig_a, sig_b, DEFAULT_DEDUP_CONFIG)
    assert time.perf_counter() - start < 1.0
    # Every row of both sets is reported at least once, with far fewer than 9M pairs.
    assert {i for i, _, _ in pairs} == set(range(3000)) and {j for _, j, _ in pairs} == set(range(3000))
    assert len(pairs) < 6000


def test_same_result_from_parquet_and_loosely_typed_columns(tmp_path):
    pytest.importorskip("pyarrow")
    rng = np.random.default_rng(17)
    long_conv = make_conv(rng, turns=4, n_words=60)
    base = make_conv(rng)
    context = [{"role": "user", "content": words(rng, 10)}]
    records = [
        {"conversation_id": "p", "messages": long_conv[:2]},
        {"conversation_id": "long", "messages": long_conv},
        {
            "conversation_id": "b1",
            "messages": context + [{"role": "assistant", "content": words(rng, 100)}],
            "rating": 5,
        },
        {"conversation_id": "b2", "messages": context + [{"role": "assistant", "content": words(rng, 100)}]},
        {"conversation_id": "x", "messages": base, "edited": True},
        {"conversation_id": "y", "messages": base},
        {"conversation_id": "n", "messages": perturb(base, rng, 2), "rating": 1},
        {"conversation_id": "solo", "messages": [{"role": "user", "content": "just one message"}]},
    ]
    frame, texts = build_frame(records)
    expected = deduplicate(frame, load_texts=loader(texts))
    assert expected.counts == {"exact_duplicate": 1, "near_duplicate": 1, "prefix_duplicate": 1, "branch_duplicate": 1}

    path = tmp_path / "sig.parquet"
    frame.to_parquet(path)
    from_parquet = pd.read_parquet(path)
    loose = frame.astype({"context_hash": object, "rating": object, "edited": object, "response_time_ms": object})
    loose["prefix_hashes"] = [h if h else None for h in frame["prefix_hashes"]]
    for other in (from_parquet, loose):
        got = deduplicate(other, load_texts=loader(texts))
        assert got.kind == expected.kind and got.duplicate_of == expected.duplicate_of
        assert np.array_equal(got.cluster_id, expected.cluster_id)
