"""Regression tests for the data-safety findings of issue 15 that are fixed (each test is named
after its finding): raw PII in sample metadata, two file names sharing a folder, one deeply
nested line dropping the rest of its file, a UTF-8 BOM, and memory growing with line length."""

import gzip
import json
import shutil
import tracemalloc
import unicodedata

import dagster as dg
import pandas as pd
import pytest

from ft_pipeline.definitions import ALL_ASSETS, DATASET_ASSETS, PER_FILE_ASSETS
from ft_pipeline.defs.partitions import log_files_partitions
from ft_pipeline.lib.records import QUARANTINE_REASONS, ReadConfig, read_log_file
from ft_pipeline.lib.storage import legacy_safe_name, partition_artifacts, safe_name
from ft_pipeline_tests.conftest import register_evaluated_version

# One value of every kind the scrubber knows, as written in a raw log.
PLANTED_PII = {
    "EMAIL": "jane.doe@example.com",
    "PHONE": "(415) 867-5309",
    "CREDIT_CARD": "4111 1111 1111 1111",
    "IBAN": "DE89 3704 0044 0532 0130 00",
    "SSN": "123-45-6789",
    "IP_ADDRESS": "81.2.69.160",
    "MAC_ADDRESS": "3C:22:FB:1A:9E:04",
    "SECRET": "sk-proj-4fJ9kL2mN8pQ1rS5tU7vW3xY6zA0bC",
}


def _record(i: int, user_text: str = "My plug will not pair with the app after the update, what should I do?") -> dict:
    return {
        "conversation_id": f"c-{i}",
        "messages": [
            {"role": "user", "content": user_text},
            {
                "role": "assistant",
                "content": f"Hold the button for ten seconds until the light turns white, then pair it again ({i}).",
            },
        ],
    }


def _write_jsonl(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def _ingest(instance, resources, names):
    instance.add_dynamic_partitions(log_files_partitions.name, names)
    results = []
    for name in names:
        result = dg.materialize(PER_FILE_ASSETS, partition_key=name, instance=instance, resources=resources)
        assert result.success
        results.append(result)
    return results


def _all_metadata_text(results) -> str:
    texts = []
    for result in results:
        for event in result.get_asset_materialization_events():
            for value in event.materialization.metadata.values():
                texts.append(str(getattr(value, "value", value)))
    return "\n".join(texts)


def test_raw_pii_in_dagster_metadata(instance, resources, data_dir):
    # Finding 1: the `sample` metadata of raw_conversation_logs stored PII unscrubbed, in the
    # event log database, where deleting a partition does not reach it.
    records = [
        _record(i, f"Please help with my order. My details: {value}. Thanks!")
        for i, value in enumerate(PLANTED_PII.values())
    ]
    name = "pii_probe.jsonl"
    _write_jsonl(data_dir / "raw" / name, records)
    results = _ingest(instance, resources, [name])
    text = _all_metadata_text(results)
    assert "'conversation_id': 'c-0'" in text  # the sample table is there, only scrubbed
    for kind, value in PLANTED_PII.items():
        assert value not in text, f"raw {kind} in materialization metadata"
    # And in every event the run wrote (logs included), not only the metadata values.
    for result in results:
        for record in instance.all_logs(result.run_id):
            dump = str(record.dagster_event) + str(record.user_message)
            for kind, value in PLANTED_PII.items():
                assert value not in dump, f"raw {kind} in the event log"


@pytest.mark.parametrize(
    "a, b",
    [
        ("team a.jsonl", "team_a.jsonl"),
        ("Team.jsonl", "team.jsonl"),
        (unicodedata.normalize("NFC", "café.jsonl"), unicodedata.normalize("NFD", "café.jsonl")),
        ("x/y.jsonl", "x__y.jsonl"),
    ],
)
def test_two_file_names_one_folder_storage_names_are_injective(a, b):
    # Finding 2, the naming: the old slug mapped both keys of each pair to one folder.
    assert a != b
    assert safe_name(a) != safe_name(b)
    assert safe_name(a) == safe_name(a)  # stable
    if legacy_safe_name(a.lower()) == legacy_safe_name(b.lower()):
        assert safe_name(a).startswith(legacy_safe_name(a))  # still readable


def test_two_file_names_one_folder(instance, resources, data_dir):
    # Finding 2, end to end: each file's records reach the curated dataset, and purging one
    # partition leaves the other's data alone.
    first, second = "team a.jsonl", "team_a.jsonl"
    _write_jsonl(
        data_dir / "raw" / first, [_record(1, "The camera in the garage shows offline since Monday, what can I do?")]
    )
    _write_jsonl(
        data_dir / "raw" / second, [_record(2, "How do I share the doorbell with my partner on another phone?")]
    )
    _ingest(instance, resources, [first, second])
    result = dg.materialize(
        ALL_ASSETS, selection=DATASET_ASSETS, instance=instance, resources=resources, raise_on_error=False
    )
    curated_meta = next(
        e.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == "curated_dataset"
    )
    curated = pd.read_parquet(data_dir / curated_meta["path"].value)
    ours = curated[curated["source_file"].isin([first, second])]
    assert sorted(ours["source_file"]) == [first, second]
    assert sorted(ours["conversation_id"]) == ["c-1", "c-2"]

    # What `ft-pipeline partitions delete --purge` removes is partition_artifacts(key).
    kept = partition_artifacts(data_dir, second)
    purged = partition_artifacts(data_dir, first)
    assert kept and purged and not set(kept) & set(purged)
    for path in purged:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert all(p.exists() for p in kept), "purging one partition deleted the other's data"
    assert partition_artifacts(data_dir, first) == []


def test_one_deeply_nested_line_drops_the_rest_of_its_file(tmp_path):
    # Finding 3: RecursionError in json.loads became `unreadable_file` and the valid lines after
    # it were lost. Now: one quarantine row with its own reason, the next line read normally.
    path = tmp_path / "nested.jsonl"
    nested = "[" * 100_000 + "]" * 100_000
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(_record(1)) + "\n")
        f.write('{"conversation_id": "deep", "messages": ' + nested + "}\n")
        f.write(json.dumps(_record(3)) + "\n")
        f.write(json.dumps(_record(4)) + "\n")
    parsed = read_log_file(path)
    assert parsed.n_records == 4
    assert list(parsed.conversations["conversation_id"]) == ["c-1", "c-3", "c-4"]
    assert list(parsed.quarantine["reason"]) == ["too_deeply_nested"]
    assert list(parsed.quarantine["source_line"]) == [2]
    assert "too_deeply_nested" in QUARANTINE_REASONS


def test_a_utf8_bom_quarantines_the_first_record(tmp_path):
    # Finding 7 (first part): a BOM written by an editor made the first valid record invalid JSON.
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(_record(i)) + "\n" for i in range(2)).encode("utf-8"))
    parsed = read_log_file(path)
    assert list(parsed.conversations["conversation_id"]) == ["c-0", "c-1"]
    assert parsed.quarantine.empty


def test_memory_grows_with_line_length(tmp_path):
    # Finding 6: the size limit was applied after the whole line was read, so a small .gz holding
    # one 150 MB line cost hundreds of MB. Now the limit bounds what is held of a line.
    path = tmp_path / "one_huge_line.jsonl.gz"
    chunk = "x" * (1 << 20)
    head, tail = '{"conversation_id": "huge", "messages": [{"role": "user", "content": "', '"}]}\n'
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as f:
        f.write(head)
        for _ in range(150):
            f.write(chunk)
        f.write(tail)
        f.write(json.dumps(_record(2)) + "\n")
    assert path.stat().st_size < 2_000_000  # a small upload ...
    tracemalloc.start()
    try:
        parsed = read_log_file(path, ReadConfig(max_record_bytes=262_144))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert list(parsed.quarantine["reason"]) == ["oversize_record"]
    assert parsed.quarantine["detail"].iloc[0].startswith(f"line is {len(head) + 150 * len(chunk) + len(tail)} bytes")
    assert list(parsed.conversations["conversation_id"]) == ["c-2"]  # ... and the next line is read
    assert peak < 32 * 1024 * 1024, f"peak {peak / 1e6:.0f} MB while reading one 150 MB line"


def test_unknown_keys_skip_the_scrubber(tmp_path):
    # Finding 4: text under an unrecognised key and a user_id that is an email reached the curated
    # parquet raw. Now every string under metadata is scrubbed and such ids become stable pseudonyms.
    from ft_pipeline.lib.cleaning import CleaningConfig, ScrubConfig, clean_conversations

    path = tmp_path / "notes.jsonl"
    records = []
    for i in range(3):
        r = _record(i)
        r["user_id"] = "bob@example.com" if i < 2 else "user-0003"
        r["notes"] = f"call bob@example.com, card {PLANTED_PII['CREDIT_CARD']}"
        r["extra"] = {"nested": [PLANTED_PII["SECRET"]], "fine": "order 42"}
        records.append(r)
    _write_jsonl(path, records)
    cleaned = clean_conversations(read_log_file(path).conversations)
    kept = pd.concat([cleaned.kept, cleaned.filtered.drop(columns=["filter_reason", "filter_detail"], errors="ignore")])
    dump = "\n".join(str(v) for column in kept.columns if column != "minhash" for v in kept[column])
    for value in ("bob@example.com", PLANTED_PII["CREDIT_CARD"], PLANTED_PII["SECRET"]):
        assert value not in dump
    users = dict(zip(kept["conversation_id"], kept["user_id"]))
    assert users["c-0"] == users["c-1"] != "bob@example.com" and users["c-0"].startswith("user-")  # still groups
    assert users["c-2"] == "user-0003"  # an id without personal data is left alone
    assert "order 42" in kept.set_index("conversation_id").at["c-0", "metadata"]  # the rest of the metadata stays
    keyed = clean_conversations(
        read_log_file(path).conversations, CleaningConfig(scrub=ScrubConfig(id_hash_key="secret"))
    )
    assert dict(zip(keyed.kept["conversation_id"], keyed.kept["user_id"]))["c-0"] != users["c-0"]


def test_no_pii_left_reads_every_text_column(tmp_path):
    # Finding 4, the check: no_pii_left passed with PII outside the messages.
    from ft_pipeline.lib.curation import scan_dataset_for_pii

    path = tmp_path / "conversations.parquet"
    frame = pd.DataFrame(
        {
            "conversation_id": ["c-1"],
            "user_id": ["user-1"],
            "messages": [
                [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi, how can I help?"}]
            ],
            "metadata": [json.dumps({"notes": "mail jane.doe@example.com"})],
        }
    )
    frame.to_parquet(path, index=False)
    scan = scan_dataset_for_pii(path)
    assert scan.found == {"EMAIL": 1} and scan.examples == [{"conversation_id": "c-1", "type": "EMAIL"}]
    frame["metadata"] = [json.dumps({"notes": "mail <EMAIL>"})]
    frame["tags"] = [["vip", "call +1 415 867 5309"]]
    frame.to_parquet(path, index=False)
    assert scan_dataset_for_pii(path).found == {"PHONE": 1}
    frame["tags"] = [["vip"]]
    frame.to_parquet(path, index=False)
    assert scan_dataset_for_pii(path).total == 0


def test_registry_list_on_a_missing_data_dir_silently_creates_an_empty_registry(tmp_path, capsys, monkeypatch):
    # Finding 7 (part): run outside the repo, `registry list` created ./data/registry.db and said
    # nothing was registered. Now it says where it looked and exits 2, creating nothing.
    from ft_pipeline.cli import main

    monkeypatch.delenv("FT_PIPELINE_REGISTRY_URL", raising=False)
    missing = tmp_path / "nowhere"
    assert main(["registry", "--data-dir", str(missing), "list"]) == 2
    assert f"data directory {missing} does not exist" in capsys.readouterr().err
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["registry", "--data-dir", str(empty), "list"]) == 2
    assert "no registry at" in capsys.readouterr().err
    assert list(empty.iterdir()) == []


def test_registry_promote_of_the_production_version_prints_vnone_and_drops_the_reason(tmp_path, capsys, monkeypatch):
    # Finding 7 (part): promoting the version already in production echoed the old event
    # ("vNone -> v1") and dropped --reason without a word. Now it says nothing changed.
    from ft_pipeline.cli import main
    from ft_pipeline.lib.registry import ModelRegistry

    monkeypatch.delenv("FT_PIPELINE_REGISTRY_URL", raising=False)
    registry = ModelRegistry.for_data_dir(tmp_path)
    version = register_evaluated_version(
        registry, "m", model_uri="ft:gpt-4o-mini:org::abc", backend="openai", base_model="gpt-4o-mini", eval_id="e1"
    )
    registry.promote("m", version.version, evaluation_id="e1", reason="first", actor="test")
    before = registry.history("m")
    code = main(
        [
            "registry",
            "--data-dir",
            str(tmp_path),
            "promote",
            "m",
            str(version.version),
            "--evaluation",
            "e1",
            "--reason",
            "again",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "vNone" not in out and f"m v{version.version} is already production: nothing changed" in out
    assert registry.history("m") == before


@pytest.mark.parametrize("damage", ["not_a_database", "mid_file"])
def test_a_corrupted_registry_db(tmp_path, capsys, monkeypatch, damage):
    # Finding 5: a corrupted registry.db gave a 120-line SQLAlchemy traceback, and damage in
    # mid-file let `promote` return 0 while SQLite's integrity check failed.
    from ft_pipeline.cli import main
    from ft_pipeline.lib.registry import ModelRegistry, RegistryCorrupt

    monkeypatch.delenv("FT_PIPELINE_REGISTRY_URL", raising=False)
    registry = ModelRegistry.for_data_dir(tmp_path)
    dataset = registry.record_dataset_version("manual", "train", "0" * 64, 1)
    for i in range(200):  # enough rows for interior b-tree pages
        registry.record_training_run(f"run-{i}-" + "x" * 200, "openai", "gpt-4o-mini", dataset, None, {"i": i}, 0)
    registry.close()
    db = tmp_path / "registry.db"
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"registry.db{suffix}").unlink(missing_ok=True)
    data = bytearray(db.read_bytes())
    if damage == "not_a_database":
        data[:16] = b"garbage garbage!"
    else:
        page = 4096
        middle = (len(data) // page // 2) * page
        data[middle : middle + page] = b"\xff" * page
    db.write_bytes(bytes(data))

    with pytest.raises(RegistryCorrupt, match=r"registry database .*registry\.db is corrupt: "):
        ModelRegistry.for_data_dir(tmp_path)
    assert main(["registry", "--data-dir", str(tmp_path), "list"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: registry database ") and "is corrupt" in err[0]


@pytest.mark.parametrize(
    "marker",
    [
        ({"chosen": True}, {"chosen": False}),
        ({"label": "chosen"}, {"label": "rejected"}),
        ({"thumbs": "up"}, {"thumbs": "down"}),
        ({}, {"regenerated": True}),  # the user asked for another answer to the rejected reply
    ],
)
def test_branch_dedup_keeps_the_chosen_reply_only_half_the_time(tmp_path, marker):
    # Finding from the HH-RLHF check: pairs sharing every turn but the last collapsed to one, but
    # with no rating the smaller conversation_id won, ignoring the record's preference field, so
    # the chosen reply was kept 50.9% of the time. Now the marker ranks before any tie-break.
    from ft_pipeline.lib.cleaning import CleaningConfig, clean_conversations
    from ft_pipeline.lib.dedup import deduplicate

    chosen, rejected = marker
    import random

    rng = random.Random(5)
    words = [
        f"{a}{b}"
        for a in ("ka", "lo", "mi", "nu", "pe", "ra", "so", "tu")
        for b in ("b", "d", "g", "k", "m", "n", "p", "t")
    ]
    records = []
    for i in range(20):
        # Unrelated texts per pair (no near duplicates across pairs); the pair shares its context.
        context = [{"role": "user", "content": " ".join(rng.choices(words, k=14)) + "?"}]
        good = {"role": "assistant", "content": "Chosen: " + " ".join(rng.choices(words, k=16)) + "."}
        bad = {"role": "assistant", "content": "Rejected: " + " ".join(rng.choices(words, k=16)) + "."}
        # Half the pairs give the rejected reply the smaller id, which used to win the tie-break.
        ids = (f"p{i:02d}-a", f"p{i:02d}-b") if i % 2 else (f"p{i:02d}-b", f"p{i:02d}-a")
        records.append({"conversation_id": ids[0], "messages": context + [good], **chosen})
        records.append({"conversation_id": ids[1], "messages": context + [bad], **rejected})
    path = tmp_path / "pairs.jsonl"
    _write_jsonl(path, records)
    conversations = read_log_file(path).conversations
    # By default the cleaning filter already drops a reply marked rejected (negative_feedback)...
    by_default = clean_conversations(conversations)
    assert len(by_default.kept) == 20 and by_default.filter_counts == {"negative_feedback": 20}
    assert all(m[-1]["content"].startswith("Chosen: ") for m in by_default.kept["messages"])
    # ...and with that filter off, the deduplication's ranking must keep the chosen one.
    kept = clean_conversations(conversations, CleaningConfig(drop_negative_feedback=False)).kept
    kept = kept.reset_index(drop=True)
    assert len(kept) == 40
    result = deduplicate(kept)
    survivors = kept[result.keep]
    assert len(survivors) == 20  # one per pair
    assert all(m[-1]["content"].startswith("Chosen: ") for m in survivors["messages"]), "a rejected reply was kept"


@pytest.mark.parametrize(
    "policy, message",
    [
        (
            {"patterns_file": "/nonexistent/pii_patterns.yaml"},
            "custom PII patterns file /nonexistent/pii_patterns.yaml cannot be read",
        ),
        (
            {"patterns": [{"name": "ORDER_ID", "regex": "NH-("}]},
            "custom PII pattern ORDER_ID: regex 'NH-(' does not compile",
        ),
        ({"person_names_model": "en_core_web_not_installed"}, "en_core_web_not_installed"),
    ],
)
def test_a_bad_pii_policy_fails_the_run_before_anything_is_written(instance, resources, data_dir, policy, message):
    # Scrubbing less than asked would leak: a policy that cannot run stops the run, with one line.
    from ft_pipeline.defs.resources import PiiPolicy

    name = sorted(p.name for p in (data_dir / "raw").iterdir())[0]
    instance.add_dynamic_partitions(log_files_partitions.name, [name])
    result = dg.materialize(
        PER_FILE_ASSETS,
        partition_key=name,
        instance=instance,
        raise_on_error=False,
        resources={**resources, "pii_policy": PiiPolicy(**policy)},
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    description = failure.step_failure_data.user_failure_data.description
    assert description.startswith("PII policy: ") and message in description and "\n" not in description
    assert not (data_dir / "parsed").exists() or not any((data_dir / "parsed").rglob("*.parquet"))
