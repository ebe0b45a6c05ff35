"""Which landed files are ready: settled, new or changed content, never twice."""

from ft_pipeline.lib.landing import LandingState, scan_landing

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
