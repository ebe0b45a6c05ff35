"""Dataset pipeline benchmark: raw JSONL logs -> cleaned -> curated -> splits, preferences, at 100k / 1M conversations.

What it measures
----------------
1. Generates N synthetic support-chat conversations as ``--files`` JSONL files (not timed as part
   of the pipeline; printed separately). About 4 messages each (user/assistant alternating, 30 %
   with a system prompt), about 120 words per message drawn Zipf-like from a vocabulary of a few
   thousand words, plus shared opener/closer boilerplate, so unrelated conversations share common
   shingles and near-duplicate detection has real candidates to reject. Planted problems: ~1 %
   exact duplicates (in another file), ~1 % near duplicates (a few words changed), ~0.5 % prefix
   duplicates, ~0.3 % branch duplicates (regenerated last reply), ~2 % of messages with PII
   (emails, phone numbers, card numbers) and ~0.5 % lines of broken JSON. Preference signals, as
   extra raw keys on the records that carry them (drawn from their own random stream, so the other
   draws stay the same): ~5 % ``thumbs`` ("up"/"down", mostly agreeing with the rating), ~2 %
   ``regenerated: true`` with the accepted reply to the same context in the next line (those
   replace fresh conversations, so curate finds them as branch duplicates), and ~1 % (a third of
   the ~3 % ``edited`` records) with the model's ``original_content``.
2. Runs the dataset stages through the stage services the Dagster assets call (one lib entry
   point per stage; only Dagster's bookkeeping, metadata values and events, is left out):
   * per file = per partition, in a ``spawn`` multiprocessing Pool of ``--workers`` processes
     (Dagster runs partitions in parallel): ``raw_conversation_logs`` = ``records.ingest_log_file``
     (parse, the file's SHA-256 for the version, parsed records scrubbed, scrubbed quarantine,
     manifest) and ``cleaned_conversations`` = ``cleaning.clean_partition`` (parsed Parquet read
     back through its manifest, ``clean_conversations``, kept and filtered Parquet, manifest,
     data version);
   * the fan-in ``curated_dataset`` = ``curation.curate``: global dedup over every cleaned file,
     removed.parquet, manifest, data version and the asset's checks (a PII re-scan and a dedup
     re-run, shown as their own steps);
   * ``train_validation_test_split`` = ``splits.make_splits``: only ``SPLIT_INPUT_COLUMNS`` of the curated file
     are read, ``assign_splits``, ``write_split_files`` (streams split Parquet + OpenAI JSONL),
     ``leakage_report`` with the curated dataset's dedup parameters, minimum sizes,
     ``validate_jsonl_file`` (train, validation) and the per-split metadata figures;
   * ``preference_dataset`` = ``preference_dataset.build_preference_dataset``, after the figures
     above are taken and in a spawned process of its own (its peak RSS is its own; not part of
     END TO END), in bounded memory: ``read_cleaned`` reads every cleaned partition's kept and
     filtered rows batch by batch, applies the structural drops and reads the signals, and spills
     the rows to shards of context groups (``--preference-shard-rows`` conversations each; one
     shard stays in memory); ``build_preferences`` runs the pair/KTO/drop rules shard by shard;
     ``assign_splits`` splits against the splits manifest the splits stage wrote; ``write`` merges
     the shards into Parquet + TRL DPO/KTO + OpenAI JSONL; then its checks (no_leakage,
     no_pii_left, OpenAI format), each step timed. ``--skip-preferences`` leaves it out;
     ``--only-preferences --out DIR`` runs it alone on the work folder an earlier ``--keep`` run
     left (its raw/, cleaned/ and splits/), e.g. to measure it at 1M without the SFT path again.
3. Prints per stage and step: wall seconds and CPU seconds (CPU of the processes doing the work,
   all threads), conversations per second of each; END TO END conversations/second (pool start ->
   splits done, over the N input records) in wall time and per CPU second; peak RSS (parent
   ``RUSAGE_SELF``, ``RUSAGE_CHILDREN``, and each worker's own peak); the record accounting (in,
   quarantined, filtered by reason, removed by dedup kind, kept, split sizes, leakage), which is
   asserted to add up; for the preference stage, conversations/s per step, its peak RSS (VmHWM)
   and its pairs by rule, KTO labels and drops by reason (asserted to add up to its input).
4. Compares our leakage check with the tutorial one (difflib ``SequenceMatcher.ratio() >= 0.8``
   between every validation/test and every train conversation) on 5,000 curated conversations;
   the pairwise run is timed on a random sample of pairs within a time budget and extrapolated.

Targets (printed as PASS/MISS; a miss never makes the script fail)
-------------------------------------------------------------------
* >= 3,000 conversations/s end to end at N = 1,000,000
* peak RSS <= 6 GB (max of parent and children)
* time(1M) / time(100k) <= 12 (computed once both result files exist)

Results are also written to ``benchmarks/out/bench_dataset_<n>.json``.

Usage::

    .venv/bin/python benchmarks/bench_dataset.py --n 100000
    .venv/bin/python benchmarks/bench_dataset.py --n 1000000 --skip-difflib
    .venv/bin/python benchmarks/bench_dataset.py --n 1000000 --only-preferences --out /tmp/bench_1m  # a kept folder
"""

from __future__ import annotations

import argparse
import difflib
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ft_pipeline.lib.openai_format import DEFAULT_OPENAI_FINE_TUNING_MODEL

RESULTS_DIR = Path(__file__).resolve().parent / "out"

TARGET_RATE = 3000.0  # conversations/s end to end, at 1M
TARGET_RATE_AT = 1_000_000
TARGET_RSS_GB = 6.0
TARGET_SCALING = 12.0
SCALING_SMALL, SCALING_LARGE = 100_000, 1_000_000

# Planted problems, as shares of N (duplicates) or of messages (PII) or of lines (bad JSON).
SHARE_EXACT, SHARE_NEAR, SHARE_PREFIX, SHARE_BRANCH = 0.01, 0.01, 0.005, 0.003
SHARE_PII_MESSAGES = 0.02
SHARE_BAD_JSON = 0.005
# Preference signals, as shares of N, written as raw record keys only on the records that carry
# them (they land in the parsed records' ``metadata``). Drawn from their own random stream, so the
# draws of the existing stages' data stay the same.
SHARE_THUMBS = 0.05  # a "thumbs": "up" / "down" key
SHARE_REGENERATED = 0.02  # "regenerated": true, plus the accepted reply in the next line (same context)
SHARE_EDIT_ORIGINAL = 0.01  # of the ~3 % edited records: an "original_content" (the reply before the edit)
SHARE_EDITED = 0.03  # edited=true (drawn as before; the cleaning stage filters these as edited_reply)

# Kinds of planted slots in a file.
ORIGINAL, EXACT, NEAR, PREFIX, BRANCH = range(5)
DUP_KIND_NAMES = {EXACT: "exact", NEAR: "near", PREFIX: "prefix", BRANCH: "branch"}


# =============================================================================== generation

COMMON_WORDS = """
the of and to a in is you that it for on with as was be this are have or by at not your from
can but if we they will an all would there their what so up out about which when one more no
do has time could them some these my other than then now only its like also into over new just
any how use because after our most first well way even want need make get work see know set
right back good still each help check account order device update app phone wifi network
setting settings option options screen button light power battery cable router hub camera
plan subscription invoice charge refund payment card billing price fee month week day hour
minute again already before after while during since until through between under around
please thanks thank sorry sure great happy glad understand issue problem question answer
try restart reset reconnect install remove open close turn start stop wait send receive email
message code link page website support team agent customer user service product model version
firmware software system error warning status signal connection internet speed range distance
room door window wall floor kitchen garage home house office building address delivery package
shipping tracking carrier box item return exchange warranty replacement repair issue ticket case
should might must may shall very really quite too much many few less more most every another
same different other next last early late soon later today tomorrow yesterday always never often
sometimes usually maybe perhaps probably definitely exactly almost about nearly around enough
""".split()

SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ter",
    "ran",
    "sol",
    "vex",
    "dor",
    "pli",
    "qua",
    "ben",
    "tis",
    "mor",
    "gal",
    "zen",
    "fin",
    "ul",
    "ar",
    "es",
    "on",
    "tri",
    "nox",
    "pel",
    "cor",
    "dan",
    "rix",
    "sup",
    "lem",
    "hal",
    "vin",
    "bro",
    "tam",
    "gen",
    "cal",
    "sto",
    "ver",
    "pan",
    "lit",
    "mun",
    "ros",
]

SYSTEM_PROMPTS = [
    "You are Nimbus, the support assistant of Nimbus Home, a smart-home device company.",
    "You are a friendly and concise customer support agent. Answer in plain English.",
    "You help customers with orders, billing and device setup. Never promise refunds you cannot give.",
    "You are the support assistant of an online store. Be polite, precise and brief.",
    "You are a technical support assistant for home network equipment.",
]
USER_OPENERS = [
    "Hi there,",
    "Hello,",
    "Hey,",
    "Good morning,",
    "Hi, I need some help.",
    "Quick question:",
    "Hello, I have a problem.",
    "Hi support team,",
    "Can you help me?",
    "I am writing because",
    "Hi again,",
    "Hello, thanks for getting back to me.",
    "So,",
    "Okay,",
    "One more thing:",
]
ASSISTANT_OPENERS = [
    "Thanks for reaching out about this.",
    "I am sorry for the trouble.",
    "Happy to help you sort this out.",
    "Thank you for the details, that helps a lot.",
    "I understand how frustrating that is.",
    "Good question, let me explain.",
    "Thanks for your patience while I checked.",
    "Let me look into that for you.",
    "I can help with that.",
    "Sorry to hear that, let us fix it.",
]
ASSISTANT_CLOSERS = [
    "Is there anything else I can help you with?",
    "Let me know if that works for you.",
    "Have a great day.",
    "Feel free to reply here if the problem comes back.",
    "I hope this helps.",
    "Thanks again for your patience.",
    "",
]
TAGS = ["billing", "shipping", "setup", "account", "returns", "warranty", "app", "wifi", "firmware", "other"]
EMAIL_NAMES = ["john", "maria", "wei", "fatima", "lucas", "olga", "sam", "priya", "ahmed", "emma", "kenji", "sofia"]
EMAIL_DOMAINS = ["gmail.com", "yahoo.com", "outlook.com", "proton.me", "example.org", "mailbox.net"]
US_AREA_CODES = [212, 213, 312, 415, 469, 503, 617, 646, 702, 718, 773, 206, 303, 404, 512, 305]
PII_TEMPLATES = [
    "you can email me at {email} if that is easier.",
    "my email is {email}",
    "please call me back on {phone} this afternoon.",
    "my number is {phone}",
    "the card I used was {card} so please check that one.",
    "I paid with card {card}",
]
ZIPF_TABLE_BITS = 20


def build_vocabulary(seed: int, size: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """Words (object array) and a lookup table that maps uniform draws to Zipf-distributed word ids.

    Real common words take the top ranks; the rest are pseudo-words made of syllables. Rank
    frequencies follow Zipf-Mandelbrot, p(k) ~ 1 / (k + 2.7). Every word also exists with a
    trailing period (ids >= size), used to end sentences.
    """
    rng = np.random.default_rng([seed, 7])
    words = list(dict.fromkeys(COMMON_WORDS))
    seen = set(words)
    while len(words) < size:
        word = "".join(rng.choice(SYLLABLES, size=int(rng.integers(2, 4))))
        if word not in seen:
            seen.add(word)
            words.append(word)
    ranks = np.arange(1, size + 1, dtype=np.float64)
    p = 1.0 / (ranks + 2.7)
    cdf = np.cumsum(p / p.sum())
    grid = (np.arange(1 << ZIPF_TABLE_BITS) + 0.5) / (1 << ZIPF_TABLE_BITS)
    table = np.minimum(np.searchsorted(cdf, grid), size - 1).astype(np.int32)
    vocab = np.array(words + [w + "." for w in words], dtype=object)
    return vocab, table


def luhn_card(rng: np.random.Generator) -> str:
    digits = [4] + [int(d) for d in rng.integers(0, 10, size=14)]
    total = 0
    for i, d in enumerate(reversed(digits)):  # the check digit will sit at the right end
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    digits.append((10 - total % 10) % 10)
    s = "".join(map(str, digits))
    return " ".join(s[i : i + 4] for i in range(0, 16, 4))


def pii_sentence(rng: np.random.Generator) -> str:
    template = PII_TEMPLATES[int(rng.integers(len(PII_TEMPLATES)))]
    name = EMAIL_NAMES[int(rng.integers(len(EMAIL_NAMES)))]
    email = (
        f"{name}.{EMAIL_NAMES[int(rng.integers(len(EMAIL_NAMES)))]}{int(rng.integers(1, 999))}"
        f"@{EMAIL_DOMAINS[int(rng.integers(len(EMAIL_DOMAINS)))]}"
    )
    area = US_AREA_CODES[int(rng.integers(len(US_AREA_CODES)))]
    phone = f"({area}) {int(rng.integers(201, 990))}-{int(rng.integers(1000, 10000))}"
    return template.format(email=email, phone=phone, card=luhn_card(rng))


class ConversationFactory:
    """Builds message lists fast: all word ids of a batch are drawn at once and joined per message."""

    def __init__(self, seed: int) -> None:
        self.vocab, self.table = build_vocabulary(seed)
        self.pii_inserted = 0

    def words(self, rng: np.random.Generator, n: int) -> list[str]:
        ids = self.table[rng.integers(0, 1 << ZIPF_TABLE_BITS, size=n)]
        ids = ids + np.where(rng.random(n) < 0.07, len(self.vocab) // 2, 0)  # sentence ends
        return self.vocab[ids].tolist()

    def conversations(self, rng: np.random.Generator, n: int, min_exchanges: int = 1) -> list[list[dict[str, str]]]:
        exchanges = rng.choice([1, 2, 3], p=[0.2, 0.6, 0.2], size=n)
        exchanges = np.maximum(exchanges, min_exchanges)
        has_system = rng.random(n) < 0.3
        n_messages = 2 * exchanges
        total = int(n_messages.sum())
        lengths = np.clip(rng.normal(120, 35, size=total), 15, 300).astype(np.int64)
        words = self.words(rng, int(lengths.sum()))
        ends = np.cumsum(lengths).tolist()
        starts = [0] + ends[:-1]
        with_pii = (rng.random(total) < SHARE_PII_MESSAGES).tolist()
        u_open = rng.integers(len(USER_OPENERS), size=total).tolist()
        a_open = rng.integers(len(ASSISTANT_OPENERS), size=total).tolist()
        a_close = rng.integers(len(ASSISTANT_CLOSERS), size=total).tolist()
        systems = rng.integers(len(SYSTEM_PROMPTS), size=n).tolist()
        out = []
        k = 0
        for c in range(n):
            messages = []
            if has_system[c]:
                messages.append({"role": "system", "content": SYSTEM_PROMPTS[systems[c]]})
            for j in range(int(n_messages[c])):
                body = words[starts[k] : ends[k]]
                if with_pii[k]:
                    body.insert(int(rng.integers(len(body) + 1)), pii_sentence(rng))
                    self.pii_inserted += 1
                if j % 2 == 0:
                    text = USER_OPENERS[u_open[k]] + " " + " ".join(body)
                    messages.append({"role": "user", "content": text})
                else:
                    text = ASSISTANT_OPENERS[a_open[k]] + " " + " ".join(body)
                    closer = ASSISTANT_CLOSERS[a_close[k]]
                    messages.append({"role": "assistant", "content": text + " " + closer if closer else text})
                k += 1
            out.append(messages)
        return out

    def near_copy(self, rng: np.random.Generator, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """The same conversation with about 0.4-1.2 % of its words replaced (Jaccard of 5-gram shingles ~0.9)."""
        out = [dict(m) for m in messages]
        editable = [i for i, m in enumerate(out) if m["role"] != "system"]
        tokens = {i: out[i]["content"].split(" ") for i in editable}
        n_words = sum(len(t) for t in tokens.values())
        n_changes = max(1, int(round(n_words * rng.uniform(0.004, 0.012))))
        replacements = self.words(rng, n_changes)
        for r in replacements:
            i = editable[int(rng.integers(len(editable)))]
            t = tokens[i]
            t[int(rng.integers(len(t)))] = r
        for i, t in tokens.items():
            out[i]["content"] = " ".join(t)
        return out

    def edit_original(self, rng: np.random.Generator, reply: str) -> str:
        """What the model said before an agent edited ``reply``: about 5 % of its words different."""
        tokens = reply.split(" ")
        n_changes = max(1, int(round(len(tokens) * rng.uniform(0.03, 0.08))))
        for r in self.words(rng, n_changes):
            tokens[int(rng.integers(len(tokens)))] = r
        original = " ".join(tokens)
        return original if original != reply else original + " " + self.words(rng, 1)[0]

    def regenerate_last_reply(self, rng: np.random.Generator, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        body = self.words(rng, int(np.clip(rng.normal(120, 35), 15, 300)))
        reply = ASSISTANT_OPENERS[int(rng.integers(len(ASSISTANT_OPENERS)))] + " " + " ".join(body)
        return [dict(m) for m in messages[:-1]] + [{"role": "assistant", "content": reply}]


def prefix_of(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation up to and including its first assistant reply."""
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            return [dict(x) for x in messages[: i + 1]]
    raise ValueError("no assistant message")


@dataclass
class FilePlan:
    index: int
    path: str
    n_lines: int
    special_slots: np.ndarray  # slot -> (pool item, kind) for planted originals/duplicates
    special_items: np.ndarray
    special_kinds: np.ndarray
    bad_slots: np.ndarray
    pool_size: int
    n_total: int
    seed: int


def plan_files(n: int, files: int, raw_dir: Path, seed: int) -> list[FilePlan]:
    """Decide which slot of which file holds a planted original, a duplicate of it, or a bad line.

    Every planted duplicate has its own source conversation (a "pool" item, generated
    identically in every generator process); the original sits in one file and the duplicate in
    another, so the duplicate is only found by the global dedup.
    """
    rng = np.random.default_rng([seed, 1])
    kinds = np.concatenate(
        [
            np.full(int(round(share * n)), kind)
            for kind, share in (
                (EXACT, SHARE_EXACT),
                (NEAR, SHARE_NEAR),
                (PREFIX, SHARE_PREFIX),
                (BRANCH, SHARE_BRANCH),
            )
        ]
    ).astype(np.int8)
    pool_size = len(kinds)
    home = rng.integers(0, files, size=pool_size)
    away = (home + rng.integers(1, files, size=pool_size)) % files if files > 1 else home
    sizes = [n // files + (1 if i < n % files else 0) for i in range(files)]
    plans = []
    for f in range(files):
        originals = np.flatnonzero(home == f)
        duplicates = np.flatnonzero(away == f)
        items = np.concatenate([originals, duplicates])
        item_kinds = np.concatenate([np.full(len(originals), ORIGINAL), kinds[duplicates]]).astype(np.int8)
        n_bad = int(round(SHARE_BAD_JSON * sizes[f]))
        if len(items) + n_bad > sizes[f]:
            raise ValueError("too few conversations per file for the planted problems; use fewer --files")
        slots = rng.choice(sizes[f], size=len(items) + n_bad, replace=False)
        plans.append(
            FilePlan(
                index=f,
                path=str(raw_dir / f"logs-{f:04d}.jsonl"),
                n_lines=sizes[f],
                special_slots=slots[: len(items)],
                special_items=items,
                special_kinds=item_kinds,
                bad_slots=np.sort(slots[len(items) :]),
                pool_size=pool_size,
                n_total=n,
                seed=seed,
            )
        )
    return plans


_GENERATOR_CACHE: dict[tuple[int, int], tuple[ConversationFactory, list]] = {}


def _factory_and_pool(seed: int, pool_size: int) -> tuple[ConversationFactory, list]:
    """The vocabulary and the pool of duplicate sources, built once per generator process."""
    key = (seed, pool_size)
    if key not in _GENERATOR_CACHE:
        factory = ConversationFactory(seed)
        pool = factory.conversations(np.random.default_rng([seed, 2]), pool_size, min_exchanges=2)
        _GENERATOR_CACHE[key] = (factory, pool)
    return _GENERATOR_CACHE[key]


def generate_file(plan: FilePlan) -> dict[str, Any]:
    """Write one JSONL file (runs in a worker). Returns what was planted in it."""
    t0 = time.perf_counter()
    factory, pool = _factory_and_pool(plan.seed, plan.pool_size)
    factory.pii_inserted = 0  # count only this file's own conversations
    rng = np.random.default_rng([plan.seed, 100 + plan.index])
    n = plan.n_lines
    special = {int(s): (int(i), int(k)) for s, i, k in zip(plan.special_slots, plan.special_items, plan.special_kinds)}
    bad = set(plan.bad_slots.tolist())

    n_users = max(1, plan.n_total // 4)
    users = rng.integers(0, n_users, size=n).tolist()
    ratings = rng.choice([1, 2, 3, 4, 5], p=[0.02, 0.03, 0.07, 0.33, 0.55], size=n)
    rated = rng.random(n) >= 0.05
    response = np.round(rng.lognormal(np.log(1200), 0.6, size=n)).astype(np.int64).tolist()
    edited = (rng.random(n) < SHARE_EDITED).tolist()
    n_tags = rng.choice([0, 1, 2], p=[0.2, 0.6, 0.2], size=n).tolist()
    tag_ids = rng.integers(len(TAGS), size=(n, 2)).tolist()
    created = (
        (np.datetime64("2025-01-01T00:00:00") + rng.integers(0, 180 * 86400, size=n).astype("timedelta64[s]"))
        .astype(str)
        .tolist()
    )
    ratings_list = [int(r) if ok else None for r, ok in zip(ratings.tolist(), rated.tolist())]
    thumbs, regenerated, with_original = preference_signals(plan, ratings_list, edited, special, bad)
    sig_rng = np.random.default_rng([plan.seed, 300 + plan.index])  # replies for regenerations and edits
    previous: list[dict[str, str]] = []

    planted = Counter()
    chunk = 10_000
    with open(plan.path, "w", encoding="utf-8") as out:
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            fresh = factory.conversations(rng, hi - lo)
            lines = []
            for slot in range(lo, hi):
                messages = fresh[slot - lo]
                if slot in special:
                    item, kind = special[slot]
                    source = pool[item]
                    if kind == ORIGINAL:
                        messages = source
                    elif kind == EXACT:
                        messages = [dict(m) for m in source]
                    elif kind == NEAR:
                        messages = factory.near_copy(rng, source)
                    elif kind == PREFIX:
                        messages = prefix_of(source)
                    else:
                        messages = factory.regenerate_last_reply(rng, source)
                    planted[DUP_KIND_NAMES.get(kind, "original")] += 1
                elif slot - 1 in regenerated:
                    # The reply the user accepted after regenerating away from the previous line's.
                    messages = factory.regenerate_last_reply(sig_rng, previous)
                    planted["regeneration_accepted"] += 1
                previous = messages
                tags = [TAGS[t] for t in tag_ids[slot][: n_tags[slot]]]
                record = {
                    "conversation_id": f"c{plan.index:04d}-{slot:07d}",
                    "user_id": f"u{users[slot]:08d}",
                    "created_at": created[slot],
                    "messages": messages,
                    "rating": ratings_list[slot],
                    "response_time_ms": response[slot],
                    "edited": edited[slot],
                    "tags": tags,
                }
                if slot in thumbs:
                    record["thumbs"] = thumbs[slot]
                    planted[f"thumbs_{thumbs[slot]}"] += 1
                if slot in regenerated:
                    record["regenerated"] = True
                    planted["regenerated"] += 1
                if slot in with_original:
                    record["original_content"] = factory.edit_original(sig_rng, messages[-1]["content"])
                    planted["edited_with_original"] += 1
                line = json.dumps(record)
                if slot in bad:
                    # Half a line (a truncated write) or a Python repr: neither is JSON.
                    line = line[: len(line) // 2] if slot % 2 else repr(record)[:500]
                    planted["bad_json"] += 1
                lines.append(line)
            out.write("\n".join(lines))
            out.write("\n")
    planted["pii_messages"] = factory.pii_inserted
    return {
        "file": plan.path,
        "lines": n,
        "planted": dict(planted),
        "bytes": os.path.getsize(plan.path),
        "seconds": time.perf_counter() - t0,
        "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def preference_signals(
    plan: FilePlan, ratings: list[int | None], edited: list[bool], special: dict[int, Any], bad: set[int]
) -> tuple[dict[int, str], set[int], set[int]]:
    """Which slots of a file carry which preference signal: slot -> thumbs ("up" / "down", mostly
    agreeing with the rating), the slots regenerated away from (the next slot, neither planted nor
    broken, holds the accepted reply to the same context), and the edited slots that keep the
    model's ``original_content``. Drawn from their own stream: the other draws stay as they were."""
    rng = np.random.default_rng([plan.seed, 200 + plan.index])
    n = plan.n_lines
    has_thumbs = rng.random(n) < SHARE_THUMBS
    u = rng.random(n)
    thumbs = {}
    for slot in np.flatnonzero(has_thumbs).tolist():
        rating = ratings[slot]
        p_up = 0.7 if rating is None else 0.9 if rating >= 4 else 0.15 if rating <= 2 else 0.5
        thumbs[slot] = "up" if u[slot] < p_up else "down"
    regenerated: set[int] = set()
    blocked = set(special) | bad
    for slot in np.flatnonzero(rng.random(n) < SHARE_REGENERATED).tolist():
        pair = {slot, slot + 1}
        if slot + 1 < n and not pair & blocked:
            regenerated.add(slot)
            blocked |= pair | {slot - 1}  # no chains: the accepted line is not regenerated itself
    keep_original = rng.random(n) < SHARE_EDIT_ORIGINAL / SHARE_EDITED
    with_original = {slot for slot in range(n) if edited[slot] and keep_original[slot] and slot - 1 not in regenerated}
    return thumbs, regenerated, with_original


# ======================================================================= per-file stages

# The steps of ingest_log_file (raw_conversation_logs); the rest of a task's steps are clean_partition's.
PARSE_STEPS = ("read_log_file", "file_sha256", "scrub_parsed", "write_parsed", "write_quarantine")

# The assets' code versions (ft_pipeline/defs/records.py, cleaning.py, curation.py, splits.py): they
# only feed the version hashes, so they are copied here to keep dagster out of the worker processes.
RAW_CODE_VERSION = "3"
CLEANED_CODE_VERSION = "4"
CURATED_CODE_VERSION = "3"
SPLITS_CODE_VERSION = "2"
PREFERENCES_CODE_VERSION = "1"  # defs/preferences.py
OPENAI_MODEL = DEFAULT_OPENAI_FINE_TUNING_MODEL  # openai_fine_tuning.model's default


def _cleaning_config_dump() -> dict[str, Any]:
    """Stand-in for ``CleaningRunConfig().model_dump()`` (feeds the version hash only)."""
    from dataclasses import asdict

    from ft_pipeline.lib.cleaning import CleaningConfig

    return asdict(CleaningConfig())


def process_file(args: tuple[str, str]) -> dict[str, Any]:
    """One partition, as ``raw_conversation_logs`` + ``cleaned_conversations`` run it (in a worker):
    the assets' stage services ``ingest_log_file`` and ``clean_partition``, with the default PII
    policy and configs. Only Dagster's own bookkeeping (metadata values, events) is left out."""
    from ft_pipeline.lib.cleaning import clean_partition
    from ft_pipeline.lib.records import ingest_log_file
    from ft_pipeline.lib.storage import safe_name

    raw_path, out_dir = args
    out = Path(out_dir)
    path = Path(raw_path)
    name = path.name
    parsed_folder, cleaned_folder = out / "parsed" / safe_name(name), out / "cleaned" / safe_name(name)

    # ---- raw_conversation_logs (defs/records.py)
    w0, c0 = time.perf_counter(), time.process_time()
    ingested = ingest_log_file(
        path, name, parsed_folder, out / "quarantine" / f"{safe_name(name)}.parquet", code_version=RAW_CODE_VERSION
    )
    timings = _step_timings(ingested.steps)
    n_records, blank_lines, n_parsed = ingested.n_records, ingested.blank_lines, len(ingested.records)
    quarantine_counts, formats = ingested.quarantine_counts, ingested.source_formats
    del ingested  # the asset returns here: its frames are gone before the next asset runs
    w1, c1 = time.perf_counter(), time.process_time()

    # ---- cleaned_conversations (defs/cleaning.py)
    result = clean_partition(
        parsed_folder, cleaned_folder, code_version=CLEANED_CODE_VERSION, settings=(_cleaning_config_dump(),)
    )
    timings.update(_step_timings(result.steps))
    cleaned = result.cleaned
    assert result.n_in == n_parsed, "cleaning lost records"
    w2, c2 = time.perf_counter(), time.process_time()

    return {
        "file": name,
        "cleaned_folder": str(cleaned_folder),
        "n_records": n_records,
        "blank_lines": blank_lines,
        "parsed": n_parsed,
        "source_formats": formats,
        "quarantine_counts": quarantine_counts,
        "kept": len(cleaned.kept),
        "filter_counts": cleaned.filter_counts,
        "pii_counts": cleaned.pii_counts,
        "repairs": cleaned.repairs,
        "parse_wall": w1 - w0,
        "parse_cpu": c1 - c0,
        "clean_wall": w2 - w1,
        "clean_cpu": c2 - c1,
        "detail": timings,
        "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "pid": os.getpid(),
    }


def _step_timings(steps: Any) -> dict[str, float]:
    """A service's StepTimes as ``{step_wall: s, step_cpu: s}``."""
    return {**{f"{k}_wall": v for k, v in steps.wall.items()}, **{f"{k}_cpu": v for k, v in steps.cpu.items()}}


def _worker_cpu(_: Any = None) -> tuple[int, float]:
    """Process id and CPU seconds of a pool worker so far (start-up imports included)."""
    time.sleep(0.2)  # keep this worker busy so the other workers answer too
    return os.getpid(), time.process_time()


def run_pool(fn, tasks: list, workers: int) -> tuple[list[dict[str, Any]], float, float]:
    """Run tasks in a spawn Pool (workers are reaped, so RUSAGE_CHILDREN covers them).

    Returns (results, wall seconds, CPU seconds of all workers: start-up + tasks)."""
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    ctx = mp.get_context("spawn")
    with ctx.Pool(processes=workers) as pool:
        results = list(pool.imap_unordered(fn, tasks, chunksize=1))
        pool.close()
        pool.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return results, time.perf_counter() - t0, cpu


# ========================================================================= fan-in stages


class _Steps:
    """Wall and CPU seconds (this process, all threads) per named step, plus the parent peak."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def __call__(self, key: str, fn, *a, **kw):
        w, c = time.perf_counter(), time.process_time()
        value = fn(*a, **kw)
        self.wall[key] = self.wall.get(key, 0.0) + time.perf_counter() - w
        self.cpu[key] = self.cpu.get(key, 0.0) + time.process_time() - c
        note_peak(key)
        return value

    def absorb(self, steps: Any) -> None:
        """Add a stage service's own step times (``ft_pipeline.lib.timing.StepTimes``)."""
        for key, wall in steps.wall.items():
            self.wall[key] = self.wall.get(key, 0.0) + wall
            self.cpu[key] = self.cpu.get(key, 0.0) + steps.cpu[key]


def curate_stage(cleaned_folders: dict[str, str], out: Path) -> tuple[Any, _Steps]:
    """curated_dataset (defs/curation.py): the stage service ``curate`` (global dedup, token
    counts, removed.parquet, manifest, data version, and the asset's checks: a fresh PII scan and
    a dedup re-run, shown as their own steps)."""
    steps = _Steps()
    # First use in this process: the import time is part of the stage (shown as its own step).
    steps(
        "imports",
        lambda: [__import__(m) for m in ("pyarrow.parquet", "ft_pipeline.lib.curation", "ft_pipeline.lib.storage")],
    )
    from ft_pipeline.lib.curation import curate

    curated = curate(cleaned_folders, out / "curated", code_version=CURATED_CODE_VERSION)
    note_peak("curate")
    steps.absorb(curated.steps)
    return curated, steps


# Parent peak RSS (ru_maxrss, GB) right after each fan-in step: shows which step raised the peak.
PARENT_PEAK_AFTER: dict[str, float] = {}


def note_peak(step: str) -> None:
    PARENT_PEAK_AFTER[step] = gib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def splits_stage(curated_manifest: Any, out: Path) -> tuple[dict[str, Any], _Steps]:
    """train_validation_test_split (defs/splits.py): the stage service ``make_splits`` (only
    SPLIT_INPUT_COLUMNS are read, ``assign_splits``, split Parquet + OpenAI JSONL streamed,
    manifest, ``leakage_report`` with the curated dataset's dedup parameters, minimum sizes,
    ``validate_jsonl_file`` for train and validation, and the per-split figures of the metadata)."""
    steps = _Steps()
    steps("imports", lambda: [__import__(m) for m in ("ft_pipeline.lib.openai_format", "ft_pipeline.lib.splits")])
    from ft_pipeline.lib.splits import make_splits

    result = make_splits(curated_manifest, out / "splits", openai_model=OPENAI_MODEL, code_version=SPLITS_CODE_VERSION)
    note_peak("make_splits")
    steps.absorb(result.steps)
    formats = result.formats
    info = {
        "sizes": result.sizes,
        "size_failures": result.size_failures,
        "leakage": result.leakage.to_dict(),
        "leaked": result.leakage.leaked,
        "openai_format_ok": {name: bool(getattr(r, "ok", False)) for name, r in formats.items()},
        "openai_format_errors": {name: _jsonable(getattr(r, "format_errors", None)) for name, r in formats.items()},
        "openai_format_problems": {
            name: [f"{k}: {v}" for k, v in (r.format_errors or {}).items() if v] + list(r.warnings)[:2]
            for name, r in formats.items()
            if not r.ok
        },
    }
    del result
    return info, steps


def own_peak_kb() -> int:
    """This process's own peak RSS in KB: ``VmHWM`` of /proc/self/status (its address space only).
    ``ru_maxrss`` is not used here: Linux carries it over an exec, so a spawned process starts with
    the RSS its parent had when it forked. Falls back to ``ru_maxrss`` where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def preference_stage(args: tuple[dict[str, str], str, int]) -> dict[str, Any]:
    """preference_dataset (defs/preferences.py), in a process of its own so its peak RSS is its
    own: the stage service ``build_preference_dataset`` over every cleaned partition (kept and
    filtered rows read batch by batch, the rules shard by shard of ``shard_rows`` conversations),
    split against the SFT splits manifest the splits stage wrote, Parquet + TRL DPO / KTO + OpenAI
    JSONL written, and its checks (no_leakage, no_pii_left, the OpenAI format of train and
    validation) as their own steps."""
    cleaned_folders, out_dir, shard_rows = args
    out = Path(out_dir)
    w0, c0 = time.perf_counter(), time.process_time()
    from dataclasses import asdict

    from ft_pipeline.lib.manifests import SplitsManifest, read_manifest
    from ft_pipeline.lib.preference_dataset import PreferenceDatasetConfig, build_preference_dataset

    w1, c1 = time.perf_counter(), time.process_time()
    rss_imports_kb = own_peak_kb()
    splits = read_manifest(out / "splits", SplitsManifest)
    assert splits is not None, "the splits stage wrote no manifest"
    config = PreferenceDatasetConfig()
    result = build_preference_dataset(
        cleaned_folders,
        splits,
        out / "preferences",
        config,
        openai_model=OPENAI_MODEL,
        code_version=PREFERENCES_CODE_VERSION,
        settings=(asdict(config),),  # stand-in for PreferenceRunConfig().model_dump() (version hash only)
        shard_rows=shard_rows,
    )
    w2, c2 = time.perf_counter(), time.process_time()
    build = result.build
    assert build.counts_add_up, f"preferences: {build.conversations_accounted} accounted != {build.n_in} read"
    return {
        "n_in": build.n_in,
        "shard_rows": shard_rows,
        "shards": max(1, -(-build.n_in // max(1, shard_rows))),
        "partitions": len(result.partitions),
        "imports_wall": w1 - w0,
        "imports_cpu": c1 - c0,
        "wall": w2 - w1,
        "cpu": c2 - c1,
        "steps": {"wall": dict(result.steps.wall), "cpu": dict(result.steps.cpu)},
        "pairs": build.pair_counts,
        "kto": build.kto_counts,
        "dropped": build.dropped_counts,
        "split_counts": result.split_counts,
        "leakage": result.leakage,
        "pii_found": result.pii_scan.found,
        "openai_format_ok": {name: bool(getattr(r, "ok", False)) for name, r in result.formats.items()},
        "rss_after_imports_kb": rss_imports_kb,
        "maxrss_kb": own_peak_kb(),
        "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def read_sample(curated_path: Path, size: int, seed: int):
    """``size`` random curated rows with their messages (for the difflib comparison), read batch
    by batch so the whole file is never in memory. Not part of the measured path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(curated_path)
    n = parquet.metadata.num_rows
    if not size or n == 0:
        return None
    wanted = np.sort(np.random.default_rng([seed, 4]).choice(n, size=min(size, n), replace=False))
    parts, offset = [], 0
    for batch in parquet.iter_batches(batch_size=50_000):
        lo, hi = np.searchsorted(wanted, [offset, offset + batch.num_rows])
        if hi > lo:
            parts.append(pa.Table.from_batches([batch]).take(pa.array(wanted[lo:hi] - offset)))
        offset += batch.num_rows
    return pa.concat_tables(parts).to_pandas()


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


# ================================================================ difflib comparison


def difflib_comparison(sample, seed: int, budget_s: float) -> dict[str, Any]:
    """Tutorial leakage check (pairwise difflib ratio >= 0.8) vs ``leakage_report`` on one 5k split."""
    from ft_pipeline.lib.dedup import conversation_text
    from ft_pipeline.lib.splits import SPLIT_NAMES, assign_splits, leakage_report

    assigned = assign_splits(sample)
    frames = {name: assigned[assigned["split"] == name].reset_index(drop=True) for name in SPLIT_NAMES}
    w = time.perf_counter()
    report = leakage_report(frames)
    ours = time.perf_counter() - w

    train = [conversation_text(m) for m in frames["train"]["messages"]]
    held_out = [conversation_text(m) for name in ("validation", "test") for m in frames[name]["messages"]]
    total_pairs = len(train) * len(held_out)
    rng = np.random.default_rng([seed, 3])
    pairs = similar = 0
    w = time.perf_counter()
    deadline = w + budget_s
    while time.perf_counter() < deadline and pairs < total_pairs:
        i, j = int(rng.integers(len(held_out))), int(rng.integers(len(train)))
        similar += difflib.SequenceMatcher(None, held_out[i], train[j]).ratio() >= 0.8
        pairs += 1
    spent = time.perf_counter() - w
    per_pair = spent / max(1, pairs)
    extrapolated = per_pair * total_pairs
    return {
        "sample": len(sample),
        "split_sizes": {name: len(f) for name, f in frames.items()},
        "total_pairs": total_pairs,
        "timed_pairs": pairs,
        "timed_seconds": spent,
        "similar_in_timed_pairs": int(similar),
        "difflib_seconds_extrapolated": extrapolated,
        "leakage_report_seconds": ours,
        "leakage_report": report.to_dict(),
        "speedup": extrapolated / ours if ours > 0 else float("inf"),
    }


# ============================================================================ reporting


def print_preferences(pref: dict[str, Any], planted: Counter | None, e2e: float | None) -> None:
    """The preference_dataset section: timings per step, peak RSS, and what the rules made."""
    n_in = pref["n_in"]
    print(
        f"\n== preference_dataset (own process, after the splits; {pref['partitions']} cleaned partitions, "
        f"{pref['shards']} shard(s) of at most {pref['shard_rows']:,} conversations) =="
    )
    rows = [
        ["imports (first use in the process)", None, pref["imports_wall"], None, pref["imports_cpu"], None],
        [
            "build_preference_dataset (checks included)",
            n_in,
            pref["wall"],
            rate(n_in, pref["wall"]),
            pref["cpu"],
            rate(n_in, pref["cpu"]),
        ],
    ]
    steps = pref["steps"]
    for key, wall in steps["wall"].items():
        cpu = steps["cpu"][key]
        parts = key in ("read_cleaned", "build_preferences")
        rows.append([f"  {key}", n_in if parts else None, wall, rate(n_in, wall) if parts else None, cpu, None])
    rows.append(
        [
            "process (spawn + imports + stage)",
            n_in,
            pref["process_wall"],
            rate(n_in, pref["process_wall"]),
            pref["process_cpu"],
            rate(n_in, pref["process_cpu"]),
        ]
    )
    print(table(["step", "rows in", "wall s", "conv/s", "CPU s", "conv/s per CPU s"], rows))
    print(
        "rows in: the cleaned partitions' kept + filtered rows (read_cleaned = read in batches, structural drops, "
        "signals, rows spilled by shard; build_preferences = the pair/KTO rules, shard by shard). Load average "
        f"{pref['load_start']:.2f} at start, {pref['load_end']:.2f} at end."
    )
    if e2e is not None:
        print(
            f"SFT path + preference_dataset: {e2e + pref['process_wall']:.1f} s elapsed "
            f"({e2e:.1f} s end to end above + {pref['process_wall']:.1f} s)"
        )
    print(
        f"peak RSS of the preference process: {gib(pref['maxrss_kb']):.2f} GB (VmHWM; after its imports "
        f"{gib(pref['rss_after_imports_kb']):.2f} GB; its ru_maxrss {gib(pref['ru_maxrss_kb']):.2f} GB starts at "
        "the parent's RSS when it was spawned)"
    )
    n_pairs = sum(pref["pairs"].values())
    n_kto = sum(pref["kto"].values())
    n_dropped = sum(pref["dropped"].values())
    n_edit = pref["pairs"].get("edit", 0)
    print(
        table(
            ["preference count", "n"],
            [
                ["conversations in", n_in],
                ["DPO pairs", n_pairs],
                *[[f"  {k}", v] for k, v in pref["pairs"].items()],
                ["KTO examples", n_kto],
                *[[f"  {k}", v] for k, v in pref["kto"].items()],
                ["dropped", n_dropped],
                *[[f"  {k}", v] for k, v in pref["dropped"].items()],
            ],
        )
    )
    print(
        f"accounting: {n_in:,} = 2 x {n_pairs - n_edit:,} two-reply pairs + {n_edit:,} edit pairs + {n_kto:,} KTO + "
        f"{n_dropped:,} dropped -> OK (asserted)"
    )
    if planted is not None:
        print_planted(planted, pref, n_edit)
    print(
        "splits (pairs / KTO): "
        + ", ".join(f"{k} {v['pairs']:,} / {v['kto']:,}" for k, v in pref["split_counts"].items())
        + f"; leakage {pref['leakage'] or 'none'}; PII found {pref['pii_found'] or 'none'}; "
        f"OpenAI format ok {pref['openai_format_ok']}"
    )


def print_planted(planted: Counter, pref: dict[str, Any], n_edit: int) -> None:
    """The generator's planted signals beside what the preference rules made of them."""
    print(
        "planted signals: "
        f"thumbs up {planted.get('thumbs_up', 0):,} / down {planted.get('thumbs_down', 0):,}; regenerated "
        f"{planted.get('regenerated', 0):,} (accepted replies {planted.get('regeneration_accepted', 0):,}) / "
        f"regeneration pairs {pref['pairs'].get('regeneration', 0):,}; edited with original_content "
        f"{planted.get('edited_with_original', 0):,} / edit pairs {n_edit:,} "
        "(broken JSON lines, contradicting ratings and planted duplicates take some)"
    )


def gib(kb: float) -> float:
    return kb / (1024 * 1024)


def pass_miss(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [
        [
            ("" if c is None else c if isinstance(c, str) else f"{c:,.2f}" if isinstance(c, float) else f"{c:,}")
            for c in r
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))
    out = [line, "-" * len(line)]
    for r in cells:
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(out)


def rate(n: int, seconds: float) -> float | None:
    return n / seconds if seconds > 0 else None


def load_results(n: int) -> dict[str, Any] | None:
    path = RESULTS_DIR / f"bench_dataset_{n}.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ================================================================================= main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000, help="conversations to generate (default 100000)")
    parser.add_argument("--workers", type=int, default=2, help="pool processes for the per-file stages (default 2)")
    parser.add_argument(
        "--files", type=int, default=None, help="JSONL files = partitions (default n / 50000, at least 2)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="work folder (default: a temp folder, removed afterwards unless --keep)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp work folder")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--skip-difflib", action="store_true", help="skip the difflib leakage-check comparison")
    parser.add_argument(
        "--skip-preferences", action="store_true", help="skip the preference_dataset stage (measured after splits)"
    )
    parser.add_argument(
        "--only-preferences",
        action="store_true",
        help="run only the preference_dataset stage on the kept work folder given by --out (raw/, cleaned/, splits/ "
        "of an earlier --keep run of the same --n); nothing is generated or removed",
    )
    parser.add_argument(
        "--preference-shard-rows",
        type=int,
        default=None,
        help="conversations per shard of the preference stage (default: build_preference_dataset's, 100000)",
    )
    parser.add_argument(
        "--difflib-budget", type=float, default=30.0, help="seconds spent timing difflib pairs (default 30)"
    )
    parser.add_argument(
        "--difflib-sample",
        type=int,
        default=5000,
        help="curated conversations for the difflib comparison (default 5000)",
    )
    args = parser.parse_args(argv)
    if args.files is None:
        args.files = max(2, args.n // 50_000)
    if args.n < 1000 or args.files < 1 or args.workers < 1:
        parser.error("need --n >= 1000, --files >= 1, --workers >= 1")
    if args.only_preferences and (args.out is None or not (args.out / "splits").is_dir()):
        parser.error("--only-preferences needs --out: the work folder of an earlier --keep run (with splits/)")
    if args.only_preferences and args.skip_preferences:
        parser.error("--only-preferences and --skip-preferences exclude each other")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    n = args.n
    temp = args.out is None
    out = Path(tempfile.mkdtemp(prefix="bench_dataset_")) if temp else args.out
    if args.only_preferences:
        return run_preferences_only(args, out)
    if not temp and out.exists() and any(out.iterdir()):
        print(f"--out {out} is not empty; give an empty or new folder", file=sys.stderr)
        return 2
    for sub in ("raw", "parsed", "quarantine", "cleaned", "curated", "splits", "preferences"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    print(f"bench_dataset: n={n:,} files={args.files} workers={args.workers} seed={args.seed} out={out}")
    print(
        f"host: {platform.node()} {os.cpu_count()} CPUs, python {platform.python_version()}, load avg "
        f"{load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}"
    )
    import ft_pipeline

    print(f"code: {Path(ft_pipeline.__file__).parent}")

    try:
        return run(args, out, load_start)
    finally:
        if temp and not args.keep:
            shutil.rmtree(out, ignore_errors=True)
        else:
            print(f"work folder kept: {out}")


def run_preference_stage(cleaned_folders: dict[str, str], out: Path, shard_rows: int | None) -> dict[str, Any]:
    """The preference stage in a spawned process of its own, with the process's wall/CPU and the load."""
    from ft_pipeline.lib.preference_dataset import DEFAULT_SHARD_ROWS

    load_start = os.getloadavg()[0]
    task = (cleaned_folders, str(out), shard_rows or DEFAULT_SHARD_ROWS)
    (pref,), process_wall, process_cpu = run_pool(preference_stage, [task], 1)
    pref.update(process_wall=process_wall, process_cpu=process_cpu, load_start=load_start)
    pref["load_end"] = os.getloadavg()[0]
    return pref


def run_preferences_only(args: argparse.Namespace, out: Path) -> int:
    """``--only-preferences``: the preference stage alone on a kept work folder (its partitions are
    the raw files' names, as the full run names them), results to ``bench_dataset_preferences_<n>.json``."""
    from ft_pipeline.lib.storage import safe_name

    names = sorted(p.name for p in (out / "raw").iterdir() if p.is_file())
    cleaned_folders = {name: str(out / "cleaned" / safe_name(name)) for name in names}
    load = os.getloadavg()
    print(
        f"bench_dataset --only-preferences: n={args.n:,} out={out} ({len(names)} partitions); host {platform.node()} "
        f"{os.cpu_count()} CPUs, python {platform.python_version()}, load avg {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    pref = run_preference_stage(cleaned_folders, out, args.preference_shard_rows)
    if pref["n_in"] > args.n:
        print(f"note: {pref['n_in']:,} rows in is more than --n {args.n:,}: is the folder from another --n?")
    print_preferences(pref, None, None)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"bench_dataset_preferences_{args.n}.json"
    results = {"n": args.n, "finished_at": datetime.now(UTC).isoformat(), "preferences": pref}
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nresults written to {path}")
    return 0


def run(args: argparse.Namespace, out: Path, load_start: tuple[float, float, float]) -> int:
    n, workers = args.n, args.workers

    # ---- 1. generate (not part of the measured figures)
    plans = plan_files(n, args.files, out / "raw", args.seed)
    gen, gen_wall, _ = run_pool(generate_file, plans, workers)
    planted = Counter()
    for g in gen:
        planted.update(g["planted"])
    raw_bytes = sum(g["bytes"] for g in gen)
    gen_rss_kb = max(g["maxrss_kb"] for g in gen)
    children_after_gen_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(
        f"\ngenerated {n:,} lines in {args.files} files, {raw_bytes / 1e9:.2f} GB of JSONL, in {gen_wall:.1f} s "
        f"(not measured; generator peak RSS {gib(gen_rss_kb):.2f} GB)"
    )
    print("planted: " + ", ".join(f"{k} {v:,}" for k, v in sorted(planted.items())))

    # ---- 2. pipeline
    note_peak("before pipeline")
    t_start = time.perf_counter()
    cpu_start = time.process_time()
    tasks = [(p.path, str(out)) for p in plans]
    per_file, pool_wall, pool_cpu = run_pool(process_file, tasks, workers)
    per_file.sort(key=lambda r: r["file"])

    cleaned_folders = {r["file"]: r["cleaned_folder"] for r in per_file}
    t_curate_start, c_curate_start = time.perf_counter(), time.process_time()
    curated, t_curate = curate_stage(cleaned_folders, out)
    curation = curated.curation
    t_curated, c_curated = time.perf_counter(), time.process_time()

    split_info, t_splits = splits_stage(curated.manifest, out)
    t_end, c_end = time.perf_counter(), time.process_time()
    e2e = t_end - t_start
    load_end = os.getloadavg()

    rss_self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    worker_rss_kb = max(r["maxrss_kb"] for r in per_file)
    peak_kb = max(rss_self_kb, rss_children_kb)
    # preference_dataset: after the figures above are taken (it is not part of END TO END, whose
    # target is the SFT path), in its own process; it reuses the cleaned partitions and the splits manifest.
    pref = None
    if not args.skip_preferences:
        pref = run_preference_stage(cleaned_folders, out, args.preference_shard_rows)
    # Outside the measured path: a sample with messages for the difflib comparison.
    sample = None if args.skip_difflib else read_sample(curation.output_path, args.difflib_sample, args.seed)

    # ---- 3. accounting
    records_in = sum(r["n_records"] for r in per_file)
    quarantine = Counter()
    filters = Counter()
    pii = Counter()
    for r in per_file:
        quarantine.update(r["quarantine_counts"])
        filters.update(r["filter_counts"])
        pii.update(r["pii_counts"])
    quarantined = sum(quarantine.values())
    parsed = sum(r["parsed"] for r in per_file)
    cleaned_kept = sum(r["kept"] for r in per_file)
    filtered = sum(filters.values())
    removed = Counter(curation.removed_counts)
    sizes = split_info["sizes"]
    leak = split_info["leakage"]

    assert records_in == n, f"records in {records_in} != lines generated {n}"
    assert records_in == quarantined + parsed, "parse: records != quarantined + parsed"
    assert parsed == filtered + cleaned_kept, "clean: parsed != filtered + kept"
    assert cleaned_kept == curation.n_in, "curate: cleaned rows != curate input"
    assert curation.n_in == curation.n_kept + sum(removed.values()), "curate: input != kept + removed"
    assert curation.n_kept == sum(sizes.values()), "splits: curated != train + validation + test"

    parse_cpu = sum(r["parse_cpu"] for r in per_file)
    clean_cpu = sum(r["clean_cpu"] for r in per_file)
    parse_task = sum(r["parse_wall"] for r in per_file)
    clean_task = sum(r["clean_wall"] for r in per_file)
    curate_wall, curate_cpu = t_curated - t_curate_start, c_curated - c_curate_start
    splits_wall, splits_cpu = t_end - t_curated, c_end - c_curated
    parent_cpu = c_end - cpu_start
    e2e_cpu = pool_cpu + parent_cpu
    detail = {k: sum(r["detail"].get(k, 0.0) for r in per_file) for k in per_file[0]["detail"]}

    print("\n== Stage timings ==")
    print(
        "wall s: elapsed time. CPU s: CPU time of the processes doing the work (all their threads; the "
        "pool row counts the workers' start-up too). Per-file rows are summed over the tasks, which run "
        f"{workers} at a time, so their wall is the sum of the task walls, not elapsed time."
    )
    rows = [
        [
            f"per-file stages, pool of {workers} (elapsed)",
            n,
            pool_wall,
            rate(n, pool_wall),
            pool_cpu,
            rate(n, pool_cpu),
        ],
        ["  parse: raw_conversation_logs (task sum)", n, parse_task, None, parse_cpu, rate(n, parse_cpu)],
    ]
    rows += [
        [f"    {k[:-4]}", None, detail[k[:-4] + "_wall"], None, v, None]
        for k, v in detail.items()
        if k.endswith("_cpu") and k[:-4] in PARSE_STEPS
    ]
    rows.append(
        ["  clean: cleaned_conversations (task sum)", parsed, clean_task, None, clean_cpu, rate(parsed, clean_cpu)]
    )
    rows += [
        [f"    {k[:-4]}", None, detail[k[:-4] + "_wall"], None, v, None]
        for k, v in detail.items()
        if k.endswith("_cpu") and k[:-4] not in PARSE_STEPS
    ]
    rows.append(
        [
            "curate (curated_dataset, checks included)",
            cleaned_kept,
            curate_wall,
            rate(cleaned_kept, curate_wall),
            curate_cpu,
            rate(cleaned_kept, curate_cpu),
        ]
    )
    rows += [[f"  {k}", None, v, None, t_curate.cpu[k], None] for k, v in t_curate.wall.items()]
    rows.append(
        [
            "splits (train_validation_test_split)",
            curation.n_kept,
            splits_wall,
            rate(curation.n_kept, splits_wall),
            splits_cpu,
            rate(curation.n_kept, splits_cpu),
        ]
    )
    rows += [[f"  {k}", None, v, None, t_splits.cpu[k], None] for k, v in t_splits.wall.items()]
    rows.append(["END TO END (parse -> splits done)", n, e2e, rate(n, e2e), e2e_cpu, rate(n, e2e_cpu)])
    print(table(["stage", "rows in", "wall s", "conv/s", "CPU s", "conv/s per CPU s"], rows))
    print(
        f"end to end: {e2e:.1f} s elapsed, {e2e_cpu:.1f} CPU s (workers {pool_cpu:.1f} incl. start-up, parent "
        f"{parent_cpu:.1f}); "
        f"{e2e_cpu / e2e:.2f} cores busy on average of {os.cpu_count()}"
    )
    print(
        f"load average at start {load_start[0]:.2f}, at end {load_end[0]:.2f} ({os.cpu_count()} CPUs; other jobs on "
        "the machine slow the figures)"
    )
    checks = [k for k in t_curate.wall if k.startswith("check_")]
    check_wall = sum(t_curate.wall[k] for k in checks)
    print(
        f"curate without its checks ({', '.join(checks)}): {curate_wall - check_wall:.1f} s wall, "
        f"{rate(cleaned_kept, curate_wall - check_wall) or 0:,.0f} conv/s "
        "(the figure before the checks were part of the stage)"
    )

    print("\n== Peak RSS ==")
    print(
        table(
            ["process", "peak RSS GB"],
            [
                ["parent (RUSAGE_SELF)", gib(rss_self_kb)],
                ["children (RUSAGE_CHILDREN, max over reaped children)", gib(rss_children_kb)],
                ["  of which: largest pipeline worker (its own RUSAGE_SELF)", gib(worker_rss_kb)],
                ["  of which: largest generator worker (not measured)", gib(gen_rss_kb)],
                ["peak = max(parent, children)", gib(peak_kb)],
            ],
        )
    )
    print("parent peak RSS after each step (GB): " + ", ".join(f"{k} {v:.2f}" for k, v in PARENT_PEAK_AFTER.items()))
    if children_after_gen_kb >= rss_children_kb and gen_rss_kb > worker_rss_kb:
        print("note: RUSAGE_CHILDREN is set by a generator process; the pipeline workers peaked lower (see above)")

    print("\n== Records ==")
    count_rows = [
        ["records in (lines)", records_in],
        ["quarantined", quarantined],
        *[[f"  {k}", v] for k, v in sorted(quarantine.items())],
        ["parsed", parsed],
        ["filtered by cleaning", filtered],
        *[[f"  {k}", v] for k, v in sorted(filters.items())],
        ["cleaned (kept per file)", cleaned_kept],
        ["removed by curate", sum(removed.values())],
        *[[f"  {k}", v] for k, v in sorted(removed.items())],
        ["curated (kept)", curation.n_kept],
        *[[f"  {k}", v] for k, v in sizes.items()],
    ]
    print(table(["count", "n"], count_rows))
    print(
        f"accounting: {records_in:,} = {quarantined:,} quarantined + {filtered:,} filtered + "
        f"{sum(removed.values()):,} removed + {curation.n_kept:,} kept  -> OK (asserted)"
    )
    print(
        "planted vs found: "
        f"bad JSON {planted['bad_json']:,} / quarantined {quarantined:,}; "
        f"exact {planted['exact']:,} / exact_duplicate {removed.get('exact_duplicate', 0):,} + duplicate_in_file "
        f"{filters.get('duplicate_in_file', 0):,}; "
        f"near {planted['near']:,} / near_duplicate {removed.get('near_duplicate', 0):,}; "
        f"prefix {planted['prefix']:,} / prefix_duplicate {removed.get('prefix_duplicate', 0):,}; "
        f"branch {planted['branch']:,} + accepted regenerations {planted.get('regeneration_accepted', 0):,} / "
        f"branch_duplicate {removed.get('branch_duplicate', 0):,} "
        "(a planted pair where cleaning filtered either copy is not a duplicate any more)"
    )
    print(f"PII scrubbed in kept rows: {dict(sorted(pii.items()))}")
    print(
        f"LSH candidate pairs {curation.candidate_pairs:,}, verified {curation.verified_pairs:,}; tokens "
        f"({curation.token_counter}) p50 {curation.token_stats.get('p50')}, p90 {curation.token_stats.get('p90')}"
    )
    print(
        f"leakage: shared groups {leak['shared_groups']}, exact duplicates across splits {leak['exact_duplicates']}, "
        f"near duplicates across splits {leak['near_duplicates']}, final-reply overlap {leak['final_reply_overlap']} "
        f"-> {'LEAKED' if split_info['leaked'] else 'no leakage'}; OpenAI format ok: {split_info['openai_format_ok']}"
    )
    for name, problems in split_info["openai_format_problems"].items():
        print(f"OpenAI format, {name}: " + "; ".join(problems))
    for failure in split_info["size_failures"]:
        print(f"minimum sizes: {failure}")

    if pref is not None:
        print_preferences(pref, planted, e2e)

    # ---- 4. targets
    e2e_rate = n / e2e
    results = {
        "n": n,
        "files": args.files,
        "workers": workers,
        "seed": args.seed,
        "finished_at": datetime.now(UTC).isoformat(),
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_start": load_start,
            "load_end": load_end,
        },
        "generation_seconds": gen_wall,
        "raw_bytes": raw_bytes,
        "end_to_end_seconds": e2e,
        "end_to_end_rate": e2e_rate,
        "end_to_end_cpu_seconds": e2e_cpu,
        "stages": {
            "pool_wall": pool_wall,
            "pool_cpu": pool_cpu,
            "parent_cpu": parent_cpu,
            "end_to_end_cpu": e2e_cpu,
            "parse_cpu": parse_cpu,
            "clean_cpu": clean_cpu,
            "parse_task_wall": parse_task,
            "clean_task_wall": clean_task,
            "worker_detail": detail,
            "curate_wall": curate_wall,
            "curate_cpu": curate_cpu,
            "curate": {"wall": t_curate.wall, "cpu": t_curate.cpu},
            "splits_wall": splits_wall,
            "splits_cpu": splits_cpu,
            "splits": {"wall": t_splits.wall, "cpu": t_splits.cpu},
        },
        "parent_peak_after_step_gb": dict(PARENT_PEAK_AFTER),
        "rss_gb": {
            "parent": gib(rss_self_kb),
            "children": gib(rss_children_kb),
            "worker_max": gib(worker_rss_kb),
            "generator_max": gib(gen_rss_kb),
            "peak": gib(peak_kb),
        },
        "counts": {
            "records_in": records_in,
            "quarantined": dict(quarantine),
            "parsed": parsed,
            "filtered": dict(filters),
            "cleaned": cleaned_kept,
            "removed": dict(removed),
            "curated": curation.n_kept,
            "splits": sizes,
            "planted": dict(planted),
            "pii": dict(pii),
            "lsh_candidate_pairs": curation.candidate_pairs,
            "lsh_verified_pairs": curation.verified_pairs,
        },
        "leakage": leak,
    }
    if pref is not None:
        results["preferences"] = pref

    print("\n== Targets ==")
    at_scale = n >= TARGET_RATE_AT
    target_rows = [
        [
            f"end to end >= {TARGET_RATE:,.0f} conv/s at 1M",
            f"{e2e_rate:,.0f} conv/s" + ("" if at_scale else f" (at n={n:,}; target is for 1M)"),
            pass_miss(e2e_rate >= TARGET_RATE),
        ],
        [f"peak RSS <= {TARGET_RSS_GB:g} GB", f"{gib(peak_kb):.2f} GB", pass_miss(gib(peak_kb) <= TARGET_RSS_GB)],
    ]
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    small = results if n == SCALING_SMALL else load_results(SCALING_SMALL)
    large = results if n == SCALING_LARGE else load_results(SCALING_LARGE)
    if small and large:
        ratio = large["end_to_end_seconds"] / small["end_to_end_seconds"]
        target_rows.append(
            [
                f"time(1M) / time(100k) <= {TARGET_SCALING:g}",
                f"{ratio:.2f} ({large['end_to_end_seconds']:.1f} s / {small['end_to_end_seconds']:.1f} s)",
                pass_miss(ratio <= TARGET_SCALING),
            ]
        )
        results["scaling_ratio"] = ratio
    else:
        target_rows.append(
            [f"time(1M) / time(100k) <= {TARGET_SCALING:g}", "needs both --n 100000 and --n 1000000 results", "n/a"]
        )
    print(table(["target", "measured", "result"], target_rows))

    # ---- 5. difflib comparison
    if sample is not None and len(sample) >= 10:
        print(f"\n== Leakage check: difflib pairwise vs leakage_report ({len(sample):,} curated conversations) ==")
        d = difflib_comparison(sample, args.seed, args.difflib_budget)
        results["difflib"] = d
        print(
            f"split {d['split_sizes']}: {d['total_pairs']:,} (validation+test) x train pairs\n"
            f"difflib SequenceMatcher(None, a, b).ratio() >= 0.8: {d['difflib_seconds_extrapolated']:,.0f} s "
            f"(~{d['difflib_seconds_extrapolated'] / 3600:.1f} h; extrapolated from {d['timed_pairs']:,} pairs timed "
            f"in {d['timed_seconds']:.1f} s, "
            f"{d['timed_seconds'] / max(1, d['timed_pairs']) * 1000:.2f} ms/pair, {d['similar_in_timed_pairs']} "
            "similar)\n"
            f"leakage_report (groups + exact + MinHash LSH): {d['leakage_report_seconds']:.3f} s "
            f"(shared groups {d['leakage_report']['shared_groups']}, exact "
            f"{d['leakage_report']['exact_duplicates']}, near {d['leakage_report']['near_duplicates']})\n"
            f"ratio: leakage_report is ~{d['speedup']:,.0f}x faster"
        )

    path = RESULTS_DIR / f"bench_dataset_{n}.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nresults written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
