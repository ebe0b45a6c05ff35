"""PII detection and scrubbing for chat transcripts.

Every detector is a candidate regex followed by a real validator where one
exists (libphonenumber metadata, Luhn, ISO 13616 mod-97, SSN allocation rules,
``ipaddress``), because a regex alone cannot tell a credit card from an order
number.

Speed: this runs over millions of messages and most contain no PII. CPython's
``re`` is only fast when a pattern starts with a literal or a single character
class, and the validating patterns need look-behinds, so they are never run
over a whole message. Instead a pre-screen (:func:`_prescreen`) maps the
message to a few byte "class strings" with ``bytes.translate`` and tests them
with substring checks; a message without any candidate shape returns after
that. Otherwise the flags it raised point the detectors at small windows
(digit clusters, ``@`` and ``:`` positions, long token runs).

Public API::

    find_pii(text, config)  -> list[PiiMatch]          # non-overlapping, sorted
    scrub_pii(text, config) -> (scrubbed, {type: n})   # typed placeholders
    placeholder(pii_type)   -> "<TYPE>"
    CustomPiiPattern(name, regex, validator)            # a team's own kind (order ids, usernames)
    load_custom_patterns(path)                          # the same, from a JSON or YAML file

Teams add what their logs hold beyond the built-in types with :class:`CustomPiiPattern`
(``PiiConfig.custom_patterns``), and person names with Presidio over a spaCy model
(``PiiConfig.person_names_model``; optional, see :func:`person_name_detector_unavailable`).

Scrubbing is idempotent: placeholders contain no digits, ``@`` or secret
prefixes, and value-style detectors refuse placeholder values.
"""

from __future__ import annotations

import importlib
import importlib.util
import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import phonenumbers

__all__ = [
    "DEFAULT_PII_CONFIG",
    "PERSON",
    "PII_TYPES",
    "CustomPiiPattern",
    "PersonNameDetectorUnavailable",
    "PiiConfig",
    "PiiMatch",
    "find_pii",
    "load_custom_patterns",
    "may_contain_pii",
    "person_name_detector_unavailable",
    "placeholder",
    "scrub_pii",
]

PII_TYPES: tuple[str, ...] = (
    "EMAIL",
    "PHONE",
    "CREDIT_CARD",
    "IBAN",
    "SSN",
    "IP_ADDRESS",
    "MAC_ADDRESS",
    "SECRET",
)

_PLACEHOLDERS: dict[str, str] = {t: f"<{t}>" for t in PII_TYPES}
_PLACEHOLDER_VALUES = frozenset(_PLACEHOLDERS.values())

# Pseudo-type for spans that have the exact shape of a strongly validated type
# but fail its validator ("DE00 3704 ...", "666-12-3456", a 4-4-4-4 card that
# fails Luhn). Never reported; it only stops the looser PHONE detector from
# claiming a fragment of them.
_VETO = "_VETO"

#: The type of the optional person-name detector (Presidio); its placeholder is ``<PERSON>``.
PERSON = "PERSON"

# Pseudo-type standing for every custom pattern in _PRIORITY.
_CUSTOM = "_CUSTOM"

# When detectors claim overlapping text the earlier type wins: secrets first
# (a PEM block or "password=..." may contain anything), then the types with
# the strongest validators; a team's own patterns next (they name exactly
# what the team means, e.g. an order id that would also pass as a phone
# number); person names from a statistical model, then PHONE last because
# its candidates are the loosest.
_PRIORITY: dict[str, int] = {
    t: i
    for i, t in enumerate(
        ("SECRET", "EMAIL", "IBAN", _VETO, "CREDIT_CARD", "SSN", "MAC_ADDRESS", "IP_ADDRESS", _CUSTOM, PERSON, "PHONE")
    )
}

# A placeholder already in the text (``<EMAIL>``, ``<ORDER_ID>``): a custom
# pattern or the name model must not claim it again, so scrubbing stays idempotent.
_PLACEHOLDER_TOKEN = re.compile(r"<[A-Z][A-Z0-9_]*>")
_TYPE_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,39}")


def _iban_text_ok(text: str) -> bool:
    return _iban_mod97_ok(re.sub(r"[^0-9A-Za-z]", "", text).upper())


def _luhn_text_ok(text: str) -> bool:
    digits = re.sub(r"[^0-9]", "", text)
    return 12 <= len(digits) <= 19 and _luhn_ok(digits)


#: Validators a custom pattern can name without writing code.
BUILTIN_VALIDATORS: dict[str, Callable[[str], bool]] = {
    "luhn": lambda text: _luhn_text_ok(text),
    "iban_mod97": lambda text: _iban_text_ok(text),
}


def _resolve_validator(spec: str) -> Callable[[str], bool]:
    if spec in BUILTIN_VALIDATORS:
        return BUILTIN_VALIDATORS[spec]
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"validator {spec!r} is neither one of {sorted(BUILTIN_VALIDATORS)} nor 'module:function'")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"validator {spec!r} cannot be imported: {exc}") from exc
    if not callable(target):
        raise ValueError(f"validator {spec!r} is not callable")
    return target


@dataclass(frozen=True)
class CustomPiiPattern:
    """A kind of personal data the built-in detectors do not know: order ids, usernames, ticket
    or account numbers. Each match of ``regex`` that passes ``validator`` is replaced by
    ``<NAME>`` and counted under ``name``, like the built-in types.

    Attributes:
        name: the type's name, upper case letters, digits and ``_`` (``ORDER_ID``); not one of
            ``PII_TYPES`` or ``PERSON``.
        regex: a Python regular expression; its whole match (group 0) is replaced. Anchor it
            with ``\\b`` so that it does not match inside longer words. It must not match the
            empty string.
        validator: optional check of each match, which drops look-alikes: ``"luhn"``,
            ``"iban_mod97"``, or ``"module:function"`` naming a callable ``str -> bool``
            importable where the pipeline runs. Default: none (every match counts).
        ignore_case: match case-insensitively. Default: ``False``.
    """

    name: str
    regex: str
    validator: str | None = None
    ignore_case: bool = False
    _compiled: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _check: Callable[[str], bool] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _TYPE_NAME.fullmatch(self.name):
            raise ValueError(
                f"custom PII pattern name {self.name!r} must be upper case letters, digits and _ (e.g. ORDER_ID)"
            )
        if self.name in PII_TYPES or self.name == PERSON:
            raise ValueError(f"custom PII pattern name {self.name!r} is a built-in type; choose another name")
        try:
            compiled = re.compile(self.regex, re.IGNORECASE if self.ignore_case else 0)
        except (re.error, TypeError) as exc:
            raise ValueError(f"custom PII pattern {self.name}: regex {self.regex!r} does not compile: {exc}") from exc
        if compiled.fullmatch(""):
            raise ValueError(f"custom PII pattern {self.name}: regex {self.regex!r} matches the empty string")
        object.__setattr__(self, "_compiled", compiled)
        try:
            check = _resolve_validator(self.validator) if self.validator else None
        except ValueError as exc:
            raise ValueError(f"custom PII pattern {self.name}: {exc}") from exc
        object.__setattr__(self, "_check", check)

    def find(self, text: str) -> list[tuple[str, int, int]]:
        """Spans ``(name, start, end)`` of the validated matches in ``text``."""
        out = []
        for m in self._compiled.finditer(text):
            if m.end() > m.start() and (self._check is None or self._check(m.group(0))):
                out.append((self.name, m.start(), m.end()))
        return out


def load_custom_patterns(path: str | Path) -> tuple[CustomPiiPattern, ...]:
    """Read custom patterns from a JSON or YAML file: a list of ``{name, regex, validator?,
    ignore_case?}`` objects (or ``{"patterns": [...]}``).

    Raises:
        ValueError: naming the file and the entry, when the file is missing, unreadable or an
            entry is not a valid pattern.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"custom PII patterns file {path} cannot be read: {exc.strerror or exc}") from exc
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # a parse error of either format: say which file
        raise ValueError(
            f"custom PII patterns file {path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}"
        ) from exc
    if isinstance(data, dict) and "patterns" in data:
        data = data["patterns"]
    if data is None:
        return ()
    if not isinstance(data, list):
        raise ValueError(f"custom PII patterns file {path}: expected a list of {{name, regex, validator?}} objects")
    patterns = []
    allowed = {"name", "regex", "validator", "ignore_case"}
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or not {"name", "regex"} <= set(entry) or set(entry) - allowed:
            raise ValueError(
                f"custom PII patterns file {path}, entry {i}: expected keys name, regex and optionally validator, "
                f"ignore_case; got {entry!r}"
            )
        try:
            patterns.append(CustomPiiPattern(**entry))
        except ValueError as exc:
            raise ValueError(f"custom PII patterns file {path}, entry {i}: {exc}") from exc
    return tuple(patterns)


class PersonNameDetectorUnavailable(RuntimeError):
    """Person-name detection was asked for but Presidio or the spaCy model is not installed."""


def person_name_detector_unavailable(model: str) -> str | None:
    """Why person-name detection with spaCy model ``model`` cannot run here, or ``None`` when
    it can: ``presidio-analyzer`` must be importable and ``model`` an installed spaCy model
    package or a local model folder (nothing is downloaded)."""
    if importlib.util.find_spec("presidio_analyzer") is None:
        return (
            "person-name detection needs Presidio: pip install 'ft-pipeline[names]' (presidio-analyzer) "
            f"and a spaCy model such as {model or 'en_core_web_sm'}"
        )
    import spacy.util

    if not model:
        return "person-name detection needs a spaCy model name or folder (person_names_model)"
    if not (spacy.util.is_package(model) or Path(model).is_dir()):
        return (
            f"spaCy model {model!r} is not installed: install its package "
            f"(python -m spacy download {model}, or pip install its wheel) or give the path of a model folder"
        )
    return None


@lru_cache(maxsize=4)
def _person_analyzer(model: str) -> Any:
    reason = person_name_detector_unavailable(model)
    if reason:
        raise PersonNameDetectorUnavailable(reason)
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    provider = NlpEngineProvider(
        nlp_configuration={"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": model}]}
    )
    return AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])


def _find_person_names(text: str, model: str, min_score: float) -> list[tuple[str, int, int]]:
    results = _person_analyzer(model).analyze(text=text, language="en", entities=[PERSON], score_threshold=min_score)
    return [(PERSON, r.start, r.end) for r in results if r.end > r.start]


@dataclass(frozen=True)
class PiiConfig:
    """Which detectors run and how they behave.

    Attributes:
        entities: PII types to detect, a subset of ``PII_TYPES``.
            Default: all of ``PII_TYPES``.
        phone_regions: ISO 3166 region codes tried, in order, for phone numbers
            written without a ``+country`` prefix. Default:
            ``("US", "GB", "DE", "FR", "IN", "CA", "BR")``.
        redact_private_ips: also redact IP addresses that are not globally
            routable (private, loopback, link-local, documentation, multicast,
            reserved). They do not identify a person, so the default ``False``
            keeps them.
        custom_patterns: a team's own kinds (:class:`CustomPiiPattern`), replaced
            by ``<NAME>``. Default: none.
        person_names_model: spaCy model (installed package name or model folder)
            for Presidio's person-name detector, replaced by ``<PERSON>``; empty
            (the default) leaves names alone. Checked when the config is made:
            a model that cannot be loaded raises
            :class:`PersonNameDetectorUnavailable` instead of scrubbing less
            than asked.
        person_name_min_score: Presidio score a name needs. Default ``0.5``.
    """

    entities: tuple[str, ...] = PII_TYPES
    phone_regions: tuple[str, ...] = ("US", "GB", "DE", "FR", "IN", "CA", "BR")
    redact_private_ips: bool = False
    custom_patterns: tuple[CustomPiiPattern, ...] = ()
    person_names_model: str = ""
    person_name_min_score: float = 0.5

    def __post_init__(self) -> None:
        # Lists are accepted for convenience but stored as tuples so the
        # config stays hashable (phone validation caches on the regions).
        object.__setattr__(self, "entities", tuple(self.entities))
        object.__setattr__(self, "phone_regions", tuple(r.upper() for r in self.phone_regions))
        object.__setattr__(self, "custom_patterns", tuple(self.custom_patterns))
        names = [p.name for p in self.custom_patterns]
        if len(set(names)) != len(names):
            raise ValueError(f"custom PII pattern names must be unique, got {names}")
        if self.person_names_model:
            reason = person_name_detector_unavailable(self.person_names_model)
            if reason:
                raise PersonNameDetectorUnavailable(reason)
        unknown = [e for e in self.entities if e not in _PLACEHOLDERS]
        if unknown:
            raise ValueError(f"unknown PII entities {unknown}; expected a subset of {PII_TYPES}")
        bad_regions = [r for r in self.phone_regions if r not in phonenumbers.SUPPORTED_REGIONS]
        if bad_regions:
            raise ValueError(f"unsupported phone regions {bad_regions}")


DEFAULT_PII_CONFIG = PiiConfig()


@dataclass(frozen=True)
class PiiMatch:
    """One detected PII span; ``text`` equals ``source[start:end]``."""

    type: str
    start: int
    end: int
    text: str


def placeholder(pii_type: str) -> str:
    """Return the replacement token for a built-in type, e.g. ``"<EMAIL>"`` or ``"<PERSON>"``.
    A custom pattern's matches become ``"<NAME>"`` after its name.

    Raises:
        KeyError: if ``pii_type`` is not one of ``PII_TYPES`` or ``PERSON``.
    """
    if pii_type == PERSON:
        return f"<{PERSON}>"
    return _PLACEHOLDERS[pii_type]


# ---------------------------------------------------------------------------
# Pre-screen

# Flags raised by the pre-screen; each gates the detectors that need it.
_F_EMAIL = 1  # "@"
_F_NUM = 2  # >= 7 digits joined by " .()+-" (phone, card, SSN, IBAN) or a dotted quad
_F_COLON = 4  # ":h:" / "::": IPv6, colon MAC
_F_MAC = 8  # "-hh-hh-" or ".hhhh.hhhh"
_F_RUN = 16  # >= 15-char [A-Za-z0-9_-] run: API keys, tokens
_F_PEM = 32  # "-----BEGIN"
_F_ASSIGN = 64  # "password=" etc. (case/space/quote-insensitive)
_F_BEARER = 128  # "bearer"


def _table(mapping: dict[int, int], default: int) -> bytes:
    return bytes(mapping.get(i, default) for i in range(256))


def _chars(s: str) -> list[int]:
    return [ord(c) for c in s]


_DIGITS = "0123456789"
_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LOWER = "abcdefghijklmnopqrstuvwxyz"

# Every table applies to text.encode("ascii", "replace"): one byte per code
# point (non-ASCII -> "?"), so byte offsets equal str offsets.
#
# The checks are bytes.translate + substring tests or regexes that start with
# a single literal: CPython runs those in tight C loops, whereas a regex that
# starts with a look-behind, a repeat or an alternation is retried at every
# position and is several times slower.

# Digits -> "0", phone separators deleted: ">= 7 digits" is one substring test.
_T_NUM = _table({c: ord("0") for c in _chars(_DIGITS)}, ord("x"))
_NUM_SEPS = b" .()-+"
# Digits -> "0", hex letters -> "h", ".:-" kept.
_T_HEX = _table(
    {
        **{c: ord("0") for c in _chars(_DIGITS)},
        **{c: ord("h") for c in _chars("abcdefABCDEF")},
        **{c: c for c in _chars(".:-")},
    },
    ord("x"),
)
_DOT_TRIGGER = re.compile(rb"\.[0h](?:[0h]{0,2}\.[0h]{1,3}\.[0h]|[0h]{3}\.[0h]{4})")  # dotted quad, Cisco MAC
_COLON_TRIGGER = re.compile(rb":[0h]{0,4}:")  # IPv6, colon MAC
_DASH_TRIGGER = re.compile(rb"-[0h]{2}-[0h]{2}-")  # dash MAC
_T_RUN = _table({c: ord("a") for c in _chars(_DIGITS + _UPPER + _LOWER + "_-")}, ord(" "))
_RUN_MIN = 15
_RUN_NEEDLE = b"a" * _RUN_MIN
# Lower-cases, folds "-" into "_" and ":" into "=", and deletes quotes and
# blanks, so 'API-Key" : ' and "api_key=" both become "api_key=".
_T_KW = _table(
    {
        **{c: c for c in _chars(_DIGITS + _LOWER)},
        **{ord(c): ord(c.lower()) for c in _UPPER},
        ord("-"): ord("_"),
        ord("_"): ord("_"),
        ord(":"): ord("="),
        ord("="): ord("="),
    },
    ord("."),
)
_KW_DELETE = b"\"' \t"
# Literal "=" first; the keyword is checked behind it.
_ASSIGN_TRIGGER = re.compile(
    rb"=(?:(?<=password=)|(?<=passwd=)|(?<=passphrase=)|(?<=pwd=)|(?<=secret=)|(?<=key=)|(?<=token=))"
)


# "bearer" in the keyword string: the letters of "bearer" (any case) separated only by the
# characters _T_KW deletes. Searched in the lower-cased bytes, it is the same test without
# building the keyword string (a translate with deletions is the slowest step of the screen).
_BEARER_TRIGGER = re.compile(rb"b[\"' \t]*e[\"' \t]*a[\"' \t]*r[\"' \t]*e[\"' \t]*r")


def _prescreen(text: str) -> tuple[int, bytes]:
    """Cheap superset test.

    Returns:
        ``(flags, run_classes)``: a bit set of ``_F_*`` flags (0 means no
        detector can match) and the run-class string the secret detector
        reuses.

    Each expensive test only runs when a necessary condition for it holds
    (">= 7 digits" before the digit-cluster test, a ":" / "=" before the
    assignment test, ...), so the flags are exactly those of the full tests.
    """
    b = text.encode("ascii", "replace")
    flags = 0
    if b"@" in b:
        flags |= _F_EMAIL
    th = b.translate(_T_HEX)
    # Digits are "0" in th: fewer than 7 digits cannot make 7 joined digits.
    if th.count(b"0") >= 7 and b"0000000" in b.translate(_T_NUM, _NUM_SEPS):
        flags |= _F_NUM
    if _DOT_TRIGGER.search(th):
        flags |= _F_NUM | _F_MAC
    if b":" in b and _COLON_TRIGGER.search(th):
        flags |= _F_COLON
    if b"-" in b and _DASH_TRIGGER.search(th):
        flags |= _F_MAC
    tw = b.translate(_T_RUN)
    if _RUN_NEEDLE in tw:
        flags |= _F_RUN
    # The keyword string is only built when a test on it can succeed: the assignment
    # trigger needs a "=" (from "=" or ":"), the PEM marker a long run.
    tk = b.translate(_T_KW, _KW_DELETE) if (b"=" in b or b":" in b or flags & _F_RUN) else b""
    if tk and _ASSIGN_TRIGGER.search(tk):
        flags |= _F_ASSIGN
    if _BEARER_TRIGGER.search(b.lower()):
        flags |= _F_BEARER
    # PEM bodies are long base64 lines, so they always raise _F_RUN.
    if flags & _F_RUN and b"_____begin" in tk:
        flags |= _F_PEM
    return flags, tw


def may_contain_pii(text: str, config: PiiConfig = DEFAULT_PII_CONFIG) -> bool:
    """Whether any detector's pre-screen fires on ``text``.

    False guarantees that :func:`find_pii` with ``config`` finds nothing in ``text`` and in every
    substring of it (each screen test looks for a shape inside the text), so one call over a whole
    conversation, its messages joined, clears all of them at once. Custom patterns and the
    person-name model have no pre-screen: with either, any non-empty text may contain PII."""
    if not text:
        return False
    if config.custom_patterns or config.person_names_model:
        return True
    return _prescreen(text)[0] != 0


# Digit clusters: starts with a bare class (not a repeat) so `re` skips to
# digits in C; >= 7 chars is the shortest dotted quad or 7-digit phone.
_NUM_CLUSTER = re.compile(r"[+(0-9][0-9 .()\-]{6,}")
_DEL_NON_DIGITS = str.maketrans("", "", " .()-+")
# Token windows extend over "." so JWT segments stay together.
_TOKEN_TAIL = re.compile(r"[A-Za-z0-9_.\-]*")


class _Scan:
    """Per-message state shared by the detectors: flags and digit clusters."""

    __slots__ = ("text", "flags", "_tw", "_clusters")

    def __init__(self, text: str, flags: int, run_classes: bytes) -> None:
        self.text = text
        self.flags = flags
        self._tw = run_classes
        self._clusters: list[tuple[int, int, int]] | None = None

    def runs(self) -> list[tuple[int, int]]:
        """Windows around runs of [A-Za-z0-9_-] of >= ``_RUN_MIN`` chars.

        A window starts where its run starts (every token shape begins with
        such a run) and extends over "." so JWTs stay whole.
        """
        tw = self._tw
        out = []
        i = tw.find(_RUN_NEEDLE)
        while i != -1:
            tail = _TOKEN_TAIL.match(self.text, i)
            assert tail is not None  # a `*` pattern always matches, if only the empty string
            e = tail.end()
            out.append((i, e))
            i = tw.find(_RUN_NEEDLE, e)
        return out

    def clusters(self) -> list[tuple[int, int, int]]:
        """Runs of digits/separators of >= 7 chars as (start, end, n_digits)."""
        if self._clusters is None:
            out = []
            for m in _NUM_CLUSTER.finditer(self.text):
                s = m.group()
                out.append((m.start(), m.end(), len(s.translate(_DEL_NON_DIGITS))))
            self._clusters = out
        return self._clusters


# Boundary class for look-arounds: ASCII word chars plus Latin letters with
# diacritics, deliberately NOT all of Unicode \w: CJK text has no spaces, so
# "電話は+81 90-1234-5678です" must still yield the number.
_W = r"0-9A-Za-z_\u00C0-\u024F"
_HEX = r"0-9A-Fa-f"
# Characters that glue a number to a larger token (version, price, ID, URL).
_NUM_GLUE_BEFORE = rf"{_W}.+#/\\@$€£¥,\-"
_NUM_GLUE_AFTER = rf"(?![{_W}]|[.,:/\-][0-9])"

_Span = tuple[str, int, int]

# ---------------------------------------------------------------------------
# EMAIL

# Local part: RFC 5322 atoms minus the punctuation that mostly appears as
# prose delimiters; Latin letters with diacritics allowed (RFC 6531).
_EMAIL = re.compile(
    r"(?<![0-9A-Za-z_\u00C0-\u024F.%+'\-])"
    r"[0-9A-Za-z_\u00C0-\u024F%+\-]+(?:[.'][0-9A-Za-z_\u00C0-\u024F%+\-]+)*"
    r"@"
    r"(?:[0-9A-Za-z\u00C0-\u024F](?:[0-9A-Za-z\u00C0-\u024F\-]{0,61}[0-9A-Za-z\u00C0-\u024F])?\.)+"
    r"(?P<tld>[A-Za-z]{2,24}|xn--[0-9a-z\-]{2,59})"
    r"(?![0-9A-Za-z_\u00C0-\u024F\-]|\.[0-9A-Za-z])"
)
# Retina assets ("logo@2x.png") look like addresses.
_FILE_EXT_TLDS = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico", "tif", "tiff", "avif", "heic"})


def _at_positions(text: str) -> list[int]:
    out = []
    i = text.find("@")
    while i != -1:
        out.append(i)
        i = text.find("@", i + 1)
    return out


_LOCAL_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_%+-.'" + "".join(
    chr(c) for c in range(0xC0, 0x250)
)


def _find_emails(scan: _Scan, config: PiiConfig) -> list[_Span]:
    text = scan.text
    out: list[_Span] = []
    done = -1
    for at in _at_positions(text):
        if at < done:
            continue
        # Walk back over the local part in C (rstrip) instead of letting the
        # regex try every start position; local parts are <= 64 chars.
        lo = max(0, at - 64)
        start = lo + len(text[lo:at].rstrip(_LOCAL_CHARS))
        while start < at and text[start] in ".'":
            start += 1
        m = _EMAIL.match(text, start) if start < at else None
        if m is None:
            continue
        done = m.end()
        if m.group("tld").lower() not in _FILE_EXT_TLDS:
            out.append(("EMAIL", m.start(), m.end()))
    return out


# ---------------------------------------------------------------------------
# PHONE

# Digit groups joined by at most one separator; "(415)" and "(0)" groups are
# allowed. Atomic so that a failed look-ahead (digits glued to letters) rejects
# the candidate instead of backtracking to a shorter, misleading prefix.
_PHONE_CAND = re.compile(
    rf"(?<![{_NUM_GLUE_BEFORE}])"
    r"(?>"
    r"(?:\+[ ]?)?"
    r"(?:\([0-9]{1,5}\)|[0-9]+)"
    r"(?:[ .\-]?(?:\([0-9]{1,5}\)|[0-9]+))*"
    r")" + _NUM_GLUE_AFTER
)
_DIGIT_GROUP = re.compile(r"[0-9]+")
# Dates and year ranges are digit groups with separators too.
_DATE_LIKE = re.compile(
    r"(?<![0-9])(?:"
    r"(?:19|20)[0-9]{2}[.\-][0-9]{1,2}[.\-][0-9]{1,2}"
    r"|[0-9]{1,2}[.\-][0-9]{1,2}[.\-](?:19|20)?[0-9]{2}"
    r"|(?:19|20)[0-9]{2} ?- ?(?:19|20)[0-9]{2}"
    r")(?![0-9])"
)
# Short or unformatted national numbers ("867-5309", "4158675309") look like
# byte counts, timestamps and IDs; accept them only after a phone-ish word.
_PHONE_CONTEXT = re.compile(
    r"(?i)phone|\btel\b|t[ée]l[ée]fono?|mobile?|\bcell|call|number|nummer|num[ée]ro"
    r"|contact|whats\s?app|\bsms\b|\bfax|\bdial|reach|\bring\b|handy|電話|携帯"
)
# 3-2-4 is the SSN layout, not a national phone layout in practice.
_SSN_SHAPE = re.compile(r"^[0-9]{3}([\- ])[0-9]{2}\1[0-9]{4}$")
_DOTTED_PHONE = re.compile(r"\(?[0-9]{2,4}\)?(?:\.[0-9]{2,4}){2,5}")


@lru_cache(maxsize=65536)
def _is_valid_phone(candidate: str, regions: tuple[str, ...]) -> bool:
    """Validate with libphonenumber metadata; cached because chats repeat numbers."""
    tries: tuple[str | None, ...] = (None,) if candidate.startswith("+") else regions
    for region in tries:
        try:
            num = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(num):
            return True
    return False


def _phone_shape_ok(cand: str, n_digits: int, text: str, start: int) -> bool:
    """Structural filters that reject look-alikes before the slow parse."""
    if n_digits < 7 or n_digits > 15:
        return False
    if not cand[-1].isdigit() or (len(cand) > 1 and not cand[-2].isdigit()):
        return False  # Phones never end in a 1-digit group; ISBNs do.
    if cand.startswith("+"):
        return True
    if _DATE_LIKE.search(cand) or _SSN_SHAPE.match(cand):
        return False
    if "." in cand and not _DOTTED_PHONE.fullmatch(cand):
        return False  # decimals "2109.02846", versions "10.0.19041.1"
    if cand.isdigit() and n_digits < 10:
        return False  # order numbers, 20240501, grant numbers
    if cand.isdigit() or n_digits < 10:
        return _PHONE_CONTEXT.search(text, max(0, start - 40), start) is not None
    return True


def _find_phones_in(text: str, lo: int, hi: int, regions: tuple[str, ...]) -> list[_Span]:
    out: list[_Span] = []
    for m in _PHONE_CAND.finditer(text, lo, hi):
        cand = m.group()
        groups = list(_DIGIT_GROUP.finditer(cand))
        n_digits = sum(g.end() - g.start() for g in groups)
        if _phone_shape_ok(cand, n_digits, text, m.start()) and _is_valid_phone(cand, regions):
            out.append(("PHONE", m.start(), m.end()))
            continue
        if cand.startswith("+") or n_digits < 12 or len(groups) < 3 or _DATE_LIKE.search(cand):
            continue
        # Too long for one national number: probably next to another number
        # ("room 12 415 867 5309"). Try space-delimited sub-runs of groups.
        found = _phone_subrun(text, m.start(), cand, groups, regions)
        if found is not None:
            out.append(("PHONE", m.start() + found[0], m.start() + found[1]))
    return out


def _phone_subrun(
    text: str, offset: int, cand: str, groups: list[re.Match[str]], regions: tuple[str, ...]
) -> tuple[int, int] | None:
    n = len(groups)
    runs = sorted(
        ((i, j) for i in range(n) for j in range(i + 1, n + 1) if (i, j) != (0, n)),
        key=lambda ij: ij[0] - ij[1],
    )
    for i, j in runs:
        nd = sum(g.end() - g.start() for g in groups[i:j])
        if not 10 <= nd <= 11:
            continue
        s, e = groups[i].start(), groups[j - 1].end()
        if s > 0 and cand[s - 1] == "(":
            s -= 1  # keep "(415)" whole
        if e < len(cand) and cand[e] == ")":
            e += 1
        # A part glued by "-" or "." to the rest is one token, not a number.
        if (s > 0 and cand[s - 1] != " ") or (e < len(cand) and cand[e] != " "):
            continue
        sub = cand[s:e]
        if _phone_shape_ok(sub, nd, text, offset + s) and _is_valid_phone(sub, regions):
            return s, e
    return None


# ---------------------------------------------------------------------------
# CREDIT_CARD

_CARD_CAND = re.compile(rf"(?<![{_NUM_GLUE_BEFORE}])(?>[0-9]+(?:[ \-][0-9]+)*)" + _NUM_GLUE_AFTER)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_ok(group_lens: list[int], digits: str) -> bool:
    # Issuer digit: 2/5 Mastercard, 3 Amex/Diners/JCB, 4 Visa, 6 Discover.
    if not 13 <= len(digits) <= 19 or digits[0] not in "23456":
        return False
    # Printed cards group as 4-4-4-4(-3), 4-6-5 or 4-6-4.
    if len(group_lens) > 1 and (group_lens[0] != 4 or any(not 3 <= g <= 6 for g in group_lens[1:])):
        return False
    return _luhn_ok(digits)


def _find_cards_in(text: str, lo: int, hi: int) -> list[_Span]:
    out: list[_Span] = []
    for m in _CARD_CAND.finditer(text, lo, hi):
        cand = m.group()
        if len(cand) < 13:
            continue
        found = list(_DIGIT_GROUP.finditer(cand))
        groups = [g.group() for g in found]
        starts = [g.start() for g in found]
        n = len(groups)
        hit = None
        # Longest run of consecutive groups first, so that a neighbouring
        # quantity ("... 1111 2 items") does not hide the card.
        for size in range(n, 0, -1):
            for i in range(n - size + 1):
                digits = "".join(groups[i : i + size])
                if _card_ok([len(g) for g in groups[i : i + size]], digits):
                    hit = (starts[i], starts[i + size - 1] + len(groups[i + size - 1]))
                    break
            if hit is not None:
                break
        if hit is not None:
            out.append(("CREDIT_CARD", m.start() + hit[0], m.start() + hit[1]))
        elif n == 4 and all(len(g) == 4 for g in groups):
            out.append((_VETO, m.start(), m.end()))  # 4-4-4-4 failing Luhn
    return out


# ---------------------------------------------------------------------------
# SSN

# Separators required: a bare 9-digit run is far more often an ID or amount.
_SSN = re.compile(
    rf"(?<![{_NUM_GLUE_BEFORE}])"
    r"([0-9]{3})([\- ])([0-9]{2})\2([0-9]{4})"
    rf"(?![{_W}]|[.,:/\-][0-9]|[ \-][0-9])"
)


def _find_ssns_in(text: str, lo: int, hi: int) -> list[_Span]:
    out: list[_Span] = []
    for m in _SSN.finditer(text, lo, hi):
        area, group, serial = m.group(1), m.group(3), m.group(4)
        valid = not (area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000")
        out.append(("SSN" if valid else _VETO, m.start(), m.end()))
    return out


# ---------------------------------------------------------------------------
# IP_ADDRESS

_IPV4 = re.compile(r"(?<![0-9A-Za-z_.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?![0-9A-Za-z_]|\.[0-9])")
_IPV6 = re.compile(
    rf"(?<![0-9A-Za-z_:.])"
    rf"(?:[{_HEX}]{{1,4}}:|:)(?:[{_HEX}]{{0,4}}:){{1,7}}"
    rf"(?:[0-9]{{1,3}}(?:\.[0-9]{{1,3}}){{3}}|[{_HEX}]{{1,4}})?"
    rf"(?![0-9A-Za-z_:]|\.[0-9])"
)
# "version 1.2.3.4", "build 10.0.0.1": a dotted quad named as a version.
_VERSION_BEFORE = re.compile(r"(?i)(?:\bversion|\bver\.?|\brelease|\bbuild|\bv)[ \t]*$")
_COLON_HIT = re.compile(rf":[{_HEX}]{{0,4}}:")


def _ip_is_personal(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return addr.is_global and not (addr.is_multicast or addr.is_reserved)


def _find_ipv4_in(text: str, lo: int, hi: int, keep_private: bool) -> list[_Span]:
    out: list[_Span] = []
    for m in _IPV4.finditer(text, lo, hi):
        s = m.start()
        if _VERSION_BEFORE.search(text, max(0, s - 12), s):
            continue
        try:
            addr = ipaddress.IPv4Address(m.group())
        except ValueError:
            continue  # octet > 255 or leading zeros
        if keep_private and not _ip_is_personal(addr):
            continue
        out.append(("IP_ADDRESS", s, m.end()))
    return out


def _merged_windows(hits: list[int], before: int, after: int, n: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for p in hits:
        lo, hi = max(0, p - before), min(n, p + after)
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def _colon_windows(scan: _Scan) -> list[tuple[int, int]]:
    text = scan.text
    # An address starts <= 4 chars before its first ":h:" and is <= 45 long.
    return _merged_windows([m.start() for m in _COLON_HIT.finditer(text)], 5, 48, len(text))


def _find_ipv6(scan: _Scan, config: PiiConfig) -> list[_Span]:
    text = scan.text
    keep_private = not config.redact_private_ips
    out: list[_Span] = []
    for lo, hi in _colon_windows(scan):
        for m in _IPV6.finditer(text, lo, hi):
            cand = m.group()
            try:
                addr = ipaddress.IPv6Address(cand)
            except ValueError:
                continue  # times ("12:30:45"), MACs, C++ scopes
            # Python slices ("a[::2]", "x[1::2]") parse as addresses too; with
            # fewer than 3 groups only the well-known "::1" / "fe80::..." count.
            if sum(1 for g in cand.split(":") if g) < 3 and not (addr.is_loopback or addr.is_link_local):
                continue
            if keep_private and not _ip_is_personal(addr):
                continue
            out.append(("IP_ADDRESS", m.start(), m.end()))
    return out


# ---------------------------------------------------------------------------
# MAC_ADDRESS

_MAC = re.compile(
    rf"(?<![0-9A-Za-z_:.\-])"
    rf"(?:[{_HEX}]{{2}}([:\-])[{_HEX}]{{2}}(?:\1[{_HEX}]{{2}}){{4}}"
    rf"|[{_HEX}]{{4}}\.[{_HEX}]{{4}}\.[{_HEX}]{{4}})"
    rf"(?![0-9A-Za-z_]|[:.\-][0-9A-Za-z])"
)
_MAC_HIT = re.compile(rf"-[{_HEX}]{{2}}-[{_HEX}]{{2}}-|\.[{_HEX}]{{4}}\.[{_HEX}]{{4}}")


def _find_macs(scan: _Scan, config: PiiConfig) -> list[_Span]:
    text = scan.text
    hits: list[int] = []
    if scan.flags & _F_COLON:
        hits.extend(m.start() for m in _COLON_HIT.finditer(text))
    if scan.flags & _F_MAC:
        hits.extend(m.start() for m in _MAC_HIT.finditer(text))
    out: list[_Span] = []
    for lo, hi in _merged_windows(sorted(hits), 5, 22, len(text)):
        for m in _MAC.finditer(text, lo, hi):
            hexdigits = set(m.group().lower()) - set(":-.")
            if hexdigits in ({"0"}, {"f"}):
                continue  # null and broadcast addresses identify no device
            out.append(("MAC_ADDRESS", m.start(), m.end()))
    return out


# ---------------------------------------------------------------------------
# IBAN

# ISO 13616 registry lengths.
_IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24,
    "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31,
    "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip

# Starts with a bare class (look-behind moved after it) so `re` need not
# enter the pattern at every position.
_IBAN_CAND = re.compile(r"[A-Z](?<![0-9A-Za-z][A-Z])[A-Z][0-9]{2}(?:[ ]?[0-9A-Z]){10,30}")


def _iban_mod97_ok(iban: str) -> bool:
    rearranged = iban[4:] + iban[:4]
    # int(c, 36) maps 0-9 -> 0-9 and A-Z -> 10-35: ISO 7064's letter table.
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _find_ibans(scan: _Scan, config: PiiConfig) -> list[_Span]:
    text = scan.text
    out: list[_Span] = []
    for m in _IBAN_CAND.finditer(text):
        cand = m.group()
        length = _IBAN_LENGTHS.get(cand[:2])
        if length is None:
            continue
        # The candidate is greedy (it may run into a following upper-case
        # word): cut it at the country's exact length.
        count = end = 0
        for i, ch in enumerate(cand):
            if ch != " ":
                count += 1
                if count == length:
                    end = i + 1
                    break
        if count < length:
            continue
        abs_end = m.start() + end
        if abs_end < len(text) and text[abs_end].isalnum():
            continue
        span = cand[:end]
        if " " in span:
            parts = span.split(" ")
            if any(len(p) != 4 for p in parts[:-1]) or not 1 <= len(parts[-1]) <= 4:
                continue
        ok = _iban_mod97_ok(span.replace(" ", ""))
        out.append(("IBAN" if ok else _VETO, m.start(), abs_end))
    return out


# ---------------------------------------------------------------------------
# Numeric clusters: PHONE, CREDIT_CARD, SSN, IPv4 share one scan.


def _find_numeric(scan: _Scan, config: PiiConfig) -> list[_Span]:
    text = scan.text
    n = len(text)
    ents = config.entities
    want_phone = "PHONE" in ents
    want_card = "CREDIT_CARD" in ents
    want_ssn = "SSN" in ents
    want_ip = "IP_ADDRESS" in ents
    keep_private = not config.redact_private_ips
    out: list[_Span] = []
    for cs, ce, nd in scan.clusters():
        # +2: the validating patterns look up to two chars past a candidate.
        hi = min(n, ce + 2)
        if want_ip and nd >= 4 and "." in text[cs:ce]:
            out.extend(_find_ipv4_in(text, cs, hi, keep_private))
        if nd < 7:
            continue
        if want_phone:
            out.extend(_find_phones_in(text, cs, hi, config.phone_regions))
        if want_ssn and nd >= 9:
            out.extend(_find_ssns_in(text, cs, hi))
        if want_card and nd >= 13:
            out.extend(_find_cards_in(text, cs, hi))
    return out


# ---------------------------------------------------------------------------
# SECRET

# Token shapes. Every branch starts with a literal so `re` can skip in C; the
# "not glued to a longer word" check is done in Python.
_SECRET_TOKEN = re.compile(
    r"sk-(?:proj-|svcacct-|admin-)?(?P<oa_tail>[A-Za-z0-9_\-]{20,})"
    r"|[sr]k_(?:live|test)_[0-9A-Za-z]{16,}"
    r"|A(?:KIA|SIA)[0-9A-Z]{16}(?![0-9A-Za-z])"
    r"|gh[pousr]_[A-Za-z0-9]{20,}"
    r"|github_pat_[A-Za-z0-9_]{20,}"
    r"|xox[abposr]-[0-9A-Za-z\-]{10,}"
    r"|AIza[0-9A-Za-z_\-]{35}(?![0-9A-Za-z_\-])"
    r"|eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"
)
_TOKEN_GLUE = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-")
_BEARER = re.compile(r"[Bb](?:earer|EARER)[ \t]+(?P<v>[A-Za-z0-9\-._~+/]{20,}=*)")
_PEM = re.compile(
    r"-----BEGIN (?P<label>[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?)-----"
    r"(?:.*?-----END (?P=label)-----|[A-Za-z0-9+/=\s:,\-]*)",
    re.DOTALL,
)
_ASSIGN_KEYS = (
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "secret",
    "apikey",
    "api_key",
    "api-key",
    "accesskey",
    "access_key",
    "access-key",
    "secretkey",
    "secret_key",
    "secret-key",
    "privatekey",
    "private_key",
    "private-key",
    "token",
)
_KEY_CHARS = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_.-")
_SEP = re.compile(r"[:=]")
_ASSIGN_VALUE = re.compile(
    r"[=>]?[ \t]*(?:\"(?P<dq>[^\"\n]{1,512})\"|'(?P<sq>[^'\n]{1,512})'|(?P<bare>[^\s\"'`<>,;&]{1,512}))"
)
_NOT_A_SECRET_VALUE = frozenset(
    {"true", "false", "null", "none", "nil", "undefined", "required", "optional", "redacted", "hidden", "changeme"}
)


# Code on the right-hand side rather than a literal: calls/subscripts
# ("os.environ.get(", "f.encrypt(b"), attribute paths ("settings.SECRET_KEY"),
# snake_case and camelCase names ("get_custom_token", "accessToken").
_CODE_VALUE = re.compile(
    r"[A-Za-z_][\w.]*[(\[].*"
    r"|[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+"
    r"|[a-z_][a-z0-9]*(?:_[a-z0-9]+)+_?"
    r"|[a-z]+(?:[A-Z][a-z]+)+",
    re.DOTALL,
)
_PLACEHOLDER_PREFIXES = (
    "your", "my_", "my-", "my ", "enter", "insert", "replace",
    "example", "placeholder", "dummy", "sample", "xxx", "...",
)  # fmt: skip


def _secret_value_ok(value: str, sep: str, quoted: bool) -> bool:
    if len(value) < 4 or value in _PLACEHOLDER_VALUES:
        return False
    low = value.lower()
    if value[0] in "<${%*" or low in _NOT_A_SECRET_VALUE or low.startswith(_PLACEHOLDER_PREFIXES):
        return False  # templates, env references, masks, literals, "YOUR_API_KEY"
    if set(value) <= {"*", "x", "X", "."}:
        return False
    if value.isdigit() and len(value) < 6:
        return False  # "token: 512" is a count, not a credential.
    if not quoted:
        if sep == ":" and value.isalpha():
            return False  # Prose: "Password: reset it via email".
        if _CODE_VALUE.fullmatch(value):
            return False
    return True


def _find_tokens(scan: _Scan) -> list[_Span]:
    text = scan.text
    out: list[_Span] = []
    for lo, hi in scan.runs():
        for m in _SECRET_TOKEN.finditer(text, lo, hi):
            s = m.start()
            if s > 0 and text[s - 1] in _TOKEN_GLUE:
                continue
            tail = m.group("oa_tail")
            # "sk-learn-style-hyphenated-words" is prose; keys mix letters
            # and digits.
            if tail is not None and not (any(c.isdigit() for c in tail) and any(c.isalpha() for c in tail)):
                continue
            out.append(("SECRET", s, m.end()))
    if scan.flags & _F_BEARER:
        for m in _BEARER.finditer(text):
            s = m.start()
            if s == 0 or text[s - 1] not in _TOKEN_GLUE:
                out.append(("SECRET", m.start("v"), m.end("v")))
    return out


def _find_url_credentials(scan: _Scan) -> list[_Span]:
    """``scheme://user:password@host``: only the password is secret."""
    text = scan.text
    out: list[_Span] = []
    for at in _at_positions(text):
        p = text.rfind("://", max(0, at - 256), at)
        if p == -1:
            continue
        userinfo = text[p + 3 : at]
        if ":" not in userinfo or any(c in userinfo for c in " \t\n/<>@"):
            continue
        user, pw = userinfo.split(":", 1)
        if user and _secret_value_ok(pw, "=", quoted=True):
            out.append(("SECRET", at - len(pw), at))
    return out


def _assignment_key(text: str, sep_pos: int) -> str:
    """The identifier before ``sep_pos``, skipping blanks and one quote."""
    j = sep_pos
    while j > 0 and text[j - 1] in " \t":
        j -= 1
    if j > 0 and text[j - 1] in "\"'":
        j -= 1
    k = j
    while k > 0 and text[k - 1] in _KEY_CHARS and j - k < 64:
        k -= 1
    return text[k:j].lower()


def _find_assignments(scan: _Scan) -> list[_Span]:
    text = scan.text
    out: list[_Span] = []
    for sm in _SEP.finditer(text):
        p = sm.start()
        key = _assignment_key(text, p)
        if not key.endswith(_ASSIGN_KEYS):
            continue
        sep = sm.group()
        if sep == ":" and key.endswith("pwd"):
            continue  # "pwd: /home/me" is the shell command's output.
        if p + 1 < len(text) and text[p + 1] in "=>":
            sep = "="  # ":=" / "=>"
        m = _ASSIGN_VALUE.match(text, p + 1)
        if m is None:
            continue
        for name, quoted in (("dq", True), ("sq", True), ("bare", False)):
            value = m.group(name)
            if value is None:
                continue
            start, end = m.start(name), m.end(name)
            if not quoted:
                stripped = value.rstrip(".,;:!?)]}")
                end -= len(value) - len(stripped)
                value = stripped
                if value.lower() == key:
                    break  # "password=password": a variable passed through
            if _secret_value_ok(value, sep, quoted):
                out.append(("SECRET", start, end))
            break
    return out


def _find_secrets(scan: _Scan, config: PiiConfig) -> list[_Span]:
    out: list[_Span] = []
    if scan.flags & (_F_RUN | _F_BEARER):
        out.extend(_find_tokens(scan))
    if scan.flags & _F_PEM:
        out.extend(("SECRET", m.start(), m.end()) for m in _PEM.finditer(scan.text))
    if scan.flags & _F_EMAIL and "://" in scan.text:
        out.extend(_find_url_credentials(scan))
    if scan.flags & _F_ASSIGN:
        out.extend(_find_assignments(scan))
    return out


# ---------------------------------------------------------------------------
# Orchestration


def _candidates(scan: _Scan, config: PiiConfig) -> list[_Span]:
    flags = scan.flags
    ents = config.entities
    out: list[_Span] = []
    if flags & _F_NUM:
        out.extend(_find_numeric(scan, config))
    if flags & _F_EMAIL and "EMAIL" in ents:
        out.extend(_find_emails(scan, config))
    if flags & _F_NUM and "IBAN" in ents:
        out.extend(_find_ibans(scan, config))
    if flags & _F_COLON and "IP_ADDRESS" in ents:
        out.extend(_find_ipv6(scan, config))
    if flags & (_F_COLON | _F_MAC) and "MAC_ADDRESS" in ents:
        out.extend(_find_macs(scan, config))
    if flags & (_F_RUN | _F_EMAIL | _F_ASSIGN | _F_BEARER | _F_PEM) and "SECRET" in ents:
        out.extend(_find_secrets(scan, config))
    return out


def _find_team_types(text: str, config: PiiConfig) -> list[_Span]:
    """Spans of the custom patterns and the person-name model, minus any that touch a
    placeholder already in the text."""
    spans: list[_Span] = []
    for pattern in config.custom_patterns:
        spans.extend(pattern.find(text))
    if config.person_names_model:
        spans.extend(_find_person_names(text, config.person_names_model, config.person_name_min_score))
    if spans and "<" in text:
        taken = [(m.start(), m.end()) for m in _PLACEHOLDER_TOKEN.finditer(text)]
        spans = [sp for sp in spans if not any(sp[1] < te and ts < sp[2] for ts, te in taken)]
    return spans


def find_pii(text: str, config: PiiConfig = DEFAULT_PII_CONFIG) -> list[PiiMatch]:
    """Detect PII in ``text``.

    Returns:
        Non-overlapping matches sorted by start. Where detectors overlap, the
        type with the stronger validator wins (see ``_PRIORITY``).
    """
    if not text:
        return []
    flags, run_classes = _prescreen(text)
    candidates = _candidates(_Scan(text, flags, run_classes), config) if flags else []
    if config.custom_patterns or config.person_names_model:
        candidates.extend(_find_team_types(text, config))
    if not candidates:
        return []
    candidates.sort(key=lambda c: (_PRIORITY.get(c[0], _PRIORITY[_CUSTOM]), c[1], c[1] - c[2]))
    taken: list[tuple[int, int]] = []
    chosen: list[_Span] = []
    for typ, s, e in candidates:
        if e <= s or any(s < te and ts < e for ts, te in taken):
            continue
        taken.append((s, e))
        chosen.append((typ, s, e))
    chosen.sort(key=lambda c: c[1])
    return [PiiMatch(typ, s, e, text[s:e]) for typ, s, e in chosen if typ != _VETO]


def scrub_pii(text: str, config: PiiConfig = DEFAULT_PII_CONFIG) -> tuple[str, dict[str, int]]:
    """Replace every detected span with its typed placeholder.

    Returns:
        ``(scrubbed_text, counts)``; ``counts`` maps PII type to the number of
        replacements and lists only types that occurred.
    """
    matches = find_pii(text, config)
    if not matches:
        return text, {}
    parts: list[str] = []
    counts: dict[str, int] = {}
    pos = 0
    for m in matches:
        parts.append(text[pos : m.start])
        parts.append(f"<{m.type}>")  # every type's placeholder, built-in or custom
        counts[m.type] = counts.get(m.type, 0) + 1
        pos = m.end
    parts.append(text[pos:])
    return "".join(parts), counts
