"""A team's own PII: custom patterns (order ids, usernames) with optional validators, loaded from
config or a JSON/YAML file, and person names through Presidio over a spaCy pipeline.

The person-name tests build their spaCy pipeline here (a blank English pipeline with an entity
ruler that knows a few names), so they need no model download; they are skipped, with the
reason, when presidio-analyzer is not installed (it comes with the ``dev`` and ``names`` extras).
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from ft_pipeline.lib.pii import (
    CustomPiiPattern,
    PersonNameDetectorUnavailable,
    PiiConfig,
    find_pii,
    load_custom_patterns,
    may_contain_pii,
    person_name_detector_unavailable,
    placeholder,
    scrub_pii,
)

ORDER_ID = CustomPiiPattern("ORDER_ID", r"\bORD-[0-9]{6}\b")
USERNAME = CustomPiiPattern("USERNAME", r"(?<![\w.])@[a-z][a-z0-9_]{2,15}\b")
TEAM = PiiConfig(custom_patterns=(ORDER_ID, USERNAME))


def is_even_order(text: str) -> bool:
    """A validator a test names as ``module:function``: order ids whose number is even."""
    return int(text[-6:]) % 2 == 0


def test_custom_patterns_are_scrubbed_with_their_own_placeholders():
    text = "Order ORD-123456 for @bob_smith; mail bob@example.com or call (415) 867-5309."
    scrubbed, counts = scrub_pii(text, TEAM)
    assert scrubbed == "Order <ORDER_ID> for <USERNAME>; mail <EMAIL> or call <PHONE>."
    assert counts == {"ORDER_ID": 1, "USERNAME": 1, "EMAIL": 1, "PHONE": 1}
    assert placeholder("EMAIL") == "<EMAIL>" and placeholder("PERSON") == "<PERSON>"


def test_without_the_patterns_the_default_scrubber_leaves_them():
    text = "Order ORD-123456 for @bob_smith"
    assert scrub_pii(text) == (text, {})
    assert not may_contain_pii("ORD-123456 is late")
    assert may_contain_pii("ORD-123456 is late", TEAM)  # no pre-screen for a team's regexes


def test_scrubbing_with_custom_patterns_is_idempotent():
    shouty = CustomPiiPattern("TICKET", r"\b[A-Z_]{6,}\b")  # would match the placeholders' names
    config = PiiConfig(custom_patterns=(shouty,))
    once, counts = scrub_pii("ticket ABCDEFG and mail a@b.co", config)
    assert once == "ticket <TICKET> and mail <EMAIL>" and counts == {"TICKET": 1, "EMAIL": 1}
    assert scrub_pii(once, config) == (once, {})


def test_a_custom_pattern_wins_over_the_loose_phone_detector():
    # "Case 4158675309" passes as a US phone number; the team says it is a case number.
    case = CustomPiiPattern("CASE_NUMBER", r"\bCase [0-9]{10}\b")
    matches = find_pii("Case 4158675309 is open", PiiConfig(custom_patterns=(case,)))
    assert [(m.type, m.text) for m in matches] == [("CASE_NUMBER", "Case 4158675309")]
    # ... but not over a validated type: a card number stays a card.
    digits = CustomPiiPattern("LONG_NUMBER", r"\b[0-9]{16}\b")
    matches = find_pii("card 4111111111111111", PiiConfig(custom_patterns=(digits,)))
    assert [(m.type, m.text) for m in matches] == [("CREDIT_CARD", "4111111111111111")]


def test_validators_drop_look_alikes():
    luhn = CustomPiiPattern("MEMBER_CARD", r"\b[0-9]{4}(?: [0-9]{4}){3}\b", validator="luhn")
    config = PiiConfig(entities=("EMAIL",), custom_patterns=(luhn,))  # the built-in card detector is off
    assert [m.text for m in find_pii("4111 1111 1111 1111 and 4111 1111 1111 1112", config)] == ["4111 1111 1111 1111"]
    even = CustomPiiPattern("ORDER_ID", r"\bORD-[0-9]{6}\b", validator=f"{__name__}:is_even_order")
    assert [m.text for m in find_pii("ORD-100002 ORD-100003", PiiConfig(custom_patterns=(even,)))] == ["ORD-100002"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "order_id", "regex": "x"}, "must be upper case"),
        ({"name": "EMAIL", "regex": "x"}, "is a built-in type"),
        ({"name": "PERSON", "regex": "x"}, "is a built-in type"),
        ({"name": "ORDER_ID", "regex": "ORD-("}, "does not compile"),
        ({"name": "ORDER_ID", "regex": "[0-9]*"}, "matches the empty string"),
        ({"name": "ORDER_ID", "regex": "x", "validator": "crc"}, "neither one of"),
        ({"name": "ORDER_ID", "regex": "x", "validator": "os:no_such_function"}, "cannot be imported"),
    ],
)
def test_a_bad_pattern_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        CustomPiiPattern(**kwargs)
    assert kwargs["name"] in str(info.value) or "name" in str(info.value)


def test_pattern_names_are_unique():
    with pytest.raises(ValueError, match="unique"):
        PiiConfig(custom_patterns=(ORDER_ID, CustomPiiPattern("ORDER_ID", r"\bO[0-9]{9}\b")))


def test_patterns_load_from_json_and_yaml(tmp_path):
    entries = [
        {"name": "ORDER_ID", "regex": r"\bORD-[0-9]{6}\b"},
        {"name": "USERNAME", "regex": r"(?<![\w.])@[a-z][a-z0-9_]{2,15}\b", "ignore_case": True},
    ]
    as_json = tmp_path / "pii.json"
    as_json.write_text(json.dumps(entries))
    as_yaml = tmp_path / "pii.yaml"
    as_yaml.write_text(
        "patterns:\n"
        "  - name: ORDER_ID\n    regex: '\\bORD-[0-9]{6}\\b'\n"
        "  - name: USERNAME\n    regex: '(?<![\\w.])@[a-z][a-z0-9_]{2,15}\\b'\n    ignore_case: true\n"
    )
    for path in (as_json, as_yaml):
        patterns = load_custom_patterns(path)
        assert [p.name for p in patterns] == ["ORDER_ID", "USERNAME"]
        assert (
            scrub_pii("ORD-000001 from @Bob_Smith", PiiConfig(custom_patterns=patterns))[0]
            == "<ORDER_ID> from <USERNAME>"
        )


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "cannot be read"),
        ("{not json", "is not valid json"),
        ('{"name": "ORDER_ID"}', "expected a list"),
        ('[{"name": "ORDER_ID"}]', "entry 0: expected keys name, regex"),
        ('[{"name": "ORDER_ID", "regex": "x", "colour": "red"}]', "entry 0: expected keys"),
        (
            '[{"name": "ORDER_ID", "regex": "x"}, {"name": "bad name", "regex": "x"}]',
            "entry 1: custom PII pattern name",
        ),
    ],
)
def test_a_bad_patterns_file_names_the_file_and_the_entry(tmp_path, content, message):
    path = tmp_path / "pii.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        load_custom_patterns(path)
    assert str(path) in str(info.value)


# --- Person names through Presidio ----------------------------------------------------------

presidio_missing = importlib.util.find_spec("presidio_analyzer") is None
needs_presidio = pytest.mark.skipif(
    presidio_missing, reason="presidio-analyzer is not installed (pip install 'ft-pipeline[names]')"
)


@pytest.fixture(scope="module")
def name_model(tmp_path_factory):
    """A spaCy pipeline folder that tags a few names as PERSON: a stand-in for en_core_web_sm
    that needs no download; Presidio loads it like any model."""
    import spacy

    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns(
        [
            {"label": "PERSON", "pattern": [{"LOWER": "maria"}, {"LOWER": "garcia"}]},
            {"label": "PERSON", "pattern": [{"LOWER": "tom"}, {"LOWER": "baker"}]},
        ]
    )
    folder = tmp_path_factory.mktemp("spacy-names")
    nlp.to_disk(folder)
    return str(folder)


@needs_presidio
def test_person_names_are_scrubbed_with_presidio(name_model):
    config = PiiConfig(custom_patterns=(ORDER_ID,), person_names_model=name_model)
    text = "Hi, this is Maria Garcia about ORD-123456; Tom Baker at tom@example.com said hello."
    scrubbed, counts = scrub_pii(text, config)
    assert scrubbed == "Hi, this is <PERSON> about <ORDER_ID>; <PERSON> at <EMAIL> said hello."
    assert counts == {"PERSON": 2, "ORDER_ID": 1, "EMAIL": 1}
    assert scrub_pii(scrubbed, config) == (scrubbed, {})
    assert may_contain_pii("Maria Garcia", config) and not may_contain_pii("Maria Garcia")


@needs_presidio
def test_a_missing_spacy_model_is_a_clear_error_not_a_download(tmp_path):
    missing = "en_core_web_definitely_not_installed"
    reason = person_name_detector_unavailable(missing)
    assert reason and missing in reason and "spacy download" in reason
    with pytest.raises(PersonNameDetectorUnavailable, match=missing):
        PiiConfig(person_names_model=missing)


def test_without_presidio_the_error_names_what_to_install(monkeypatch):
    import ft_pipeline.lib.pii as pii

    real_find_spec = pii.importlib.util.find_spec
    monkeypatch.setattr(
        pii.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "presidio_analyzer" else real_find_spec(name, *a),
    )
    with pytest.raises(PersonNameDetectorUnavailable, match=r"ft-pipeline\[names\]"):
        PiiConfig(person_names_model="en_core_web_sm")


def test_only_a_changed_policy_changes_the_data_versions():
    from ft_pipeline.lib.cleaning import ScrubConfig

    assert ScrubConfig().version_parts() == []
    assert ScrubConfig(id_hash_key="secret").version_parts() == []  # a secret never enters a hash
    assert ScrubConfig(pii=TEAM).version_parts() != []
    assert (
        ScrubConfig(pii=TEAM).version_parts()
        == ScrubConfig(pii=PiiConfig(custom_patterns=(ORDER_ID, USERNAME))).version_parts()
    )
    assert ScrubConfig(enabled=False).version_parts() != []
