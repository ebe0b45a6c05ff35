"""Which landed files are ready: settled, new or changed content, never twice."""

import hashlib
import uuid

import fsspec
import pytest

from ft_pipeline.lib.landing import LandingFolder, LandingState, scan_landing

HASHES = {"a.jsonl": "h1", "b.jsonl": "h2"}


def _scan(stats, state, hashes=HASHES):
    return scan_landing(stats, state, lambda name: hashes[name])


def test_a_file_is_ready_once_it_stopped_changing():
    ready, state = _scan({"a.jsonl": (10, 1)}, LandingState())
    assert ready == [] and state.pending == {"a.jsonl": "10:1"}
    ready, state = _scan({"a.jsonl": (20, 2)}, state)  # still being written
    assert ready == []
    ready, state = _scan({"a.jsonl": (20, 2)}, state)
    assert [r.name for r in ready] == ["a.jsonl"] and not ready[0].changed
    ready, state = _scan({"a.jsonl": (20, 2)}, state)
    assert ready == []


def test_touch_without_change_gives_no_second_run_but_new_content_does():
    state = LandingState()
    for _ in range(2):
        ready, state = _scan({"a.jsonl": (20, 2)}, state)
    assert len(ready) == 1
    for _ in range(2):
        ready, state = _scan({"a.jsonl": (20, 3)}, state)  # touched: same bytes
    assert ready == []
    for _ in range(2):
        ready, state = _scan({"a.jsonl": (30, 4)}, state, {"a.jsonl": "h9"})
    assert [(r.name, r.sha256, r.changed) for r in ready] == [("a.jsonl", "h9", True)]


def test_state_round_trips_and_forgets_deleted_files():
    state = LandingState()
    for _ in range(2):
        _, state = _scan({"a.jsonl": (1, 1), "b.jsonl": (2, 2)}, state)
    again = LandingState.from_json(state.to_json())
    assert again == state
    _, state = _scan({"b.jsonl": (2, 2)}, again)
    assert set(state.ingested) == {"b.jsonl"}


# --- LandingFolder: a local folder or an fsspec URL (object storage) -----------------------------


def _memory_url() -> str:
    return f"memory://landing-{uuid.uuid4().hex}"


def _put(url: str, name: str, data: bytes) -> None:
    with fsspec.open(f"{url}/{name}", "wb") as f:
        f.write(data)


@pytest.fixture(params=["local", "file_url", "memory"])
def landing(request, tmp_path):
    """The same folder behaviour through a plain path, a file:// URL and fsspec's in-memory store."""
    if request.param == "local":
        root = tmp_path / "raw"
        root.mkdir()
        return LandingFolder(root), lambda name, data: (
            (root / name).parent.mkdir(parents=True, exist_ok=True),
            (root / name).write_bytes(data),
        )
    if request.param == "file_url":
        root = tmp_path / "raw"
        root.mkdir()
        url = f"file://{root}"
        return LandingFolder(url), lambda name, data: _put(url, name, data)
    url = _memory_url()
    return LandingFolder(url), lambda name, data: _put(url, name, data)


def test_landing_folder_lists_hashes_and_fetches(landing, tmp_path):
    folder, put = landing
    assert folder.list_files() == []
    put("day1.jsonl", b'{"messages": []}\n')
    put("2024/05/day2.jsonl.gz", b"gz")
    put(".day3.jsonl.partial", b"half")  # an uploader's temporary file
    put("notes.txt", b"not a log")
    assert folder.list_files() == ["2024/05/day2.jsonl.gz", "day1.jsonl"]
    stats = folder.stats()
    assert stats["day1.jsonl"][0] == len(b'{"messages": []}\n')
    assert folder.sha256("day1.jsonl") == hashlib.sha256(b'{"messages": []}\n').hexdigest()
    assert folder.exists("day1.jsonl") and not folder.exists("missing.jsonl")
    local = folder.fetch("2024/05/day2.jsonl.gz", tmp_path / "cache")
    assert local.read_bytes() == b"gz"
    assert not list((tmp_path / "cache").rglob(".*.partial"))
    for bad in ("../outside.jsonl", "/etc/passwd.jsonl"):
        with pytest.raises(ValueError, match="outside the landing folder"):
            folder.fetch(bad, tmp_path / "cache")


def test_landing_folder_stamp_changes_when_a_file_is_rewritten(landing):
    folder, put = landing
    put("day1.jsonl", b"a")
    before = folder.stats()["day1.jsonl"]
    import time

    time.sleep(0.02)
    put("day1.jsonl", b"b")  # same size, new content
    after = folder.stats()["day1.jsonl"]
    assert before[0] == after[0] and before != after


def test_sensor_logic_over_object_storage():
    """scan_landing on a memory:// folder: settle, then exactly one ready file per content."""
    url = _memory_url()
    folder = LandingFolder(url)
    _put(url, "day1.jsonl", b"x\n")
    ready, state = scan_landing(folder.stats(), LandingState(), folder.sha256)
    assert not ready
    ready, state = scan_landing(folder.stats(), state, folder.sha256)
    assert [r.name for r in ready] == ["day1.jsonl"]
    assert ready[0].sha256 == hashlib.sha256(b"x\n").hexdigest()
    ready, state = scan_landing(folder.stats(), state, folder.sha256)
    assert not ready


def test_missing_remote_root_is_empty_not_an_error():
    assert LandingFolder(_memory_url()).list_files() == []
