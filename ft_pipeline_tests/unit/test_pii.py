"""Tests for ft_pipeline.lib.pii against a labeled corpus.

Every positive case states the exact (type, span text) pairs the detector must
return; every look-alike must come back untouched. The summary test computes
per-type precision and recall over the whole corpus, so a detector that
breaks (misses, over-matches or mislabels) fails both its own case and the
summary.
"""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

import pytest

from ft_pipeline.lib.pii import (
    DEFAULT_PII_CONFIG,
    PII_TYPES,
    PiiConfig,
    PiiMatch,
    find_pii,
    placeholder,
    scrub_pii,
)

Expected = list[tuple[str, str]]

PEM_KEY = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEAv8X9k2L0mQz7hR3sT1uV5wX9yZ0aB2cD4eF6gH8iJ0kL2mN4\n"
    "oP6qR8sT0uV2wX4yZ6aB8cD0eF2gH4iJ6kL8mN0oP2qR4sT6uV8wX0yZ2aB4cD6\n"
    "eF8gH0iJ2kL4mN6oP8qR0sT2uV4wX6yZ8aB0cD2eF4gH6iJ8kL0mN2oP4qR6sT8==\n"
    "-----END RSA PRIVATE KEY-----"
)

# (case id, text, expected matches in order)
POSITIVE_CASES: list[tuple[str, str, Expected]] = [
    # EMAIL
    ("email_plain", "Contact me at jane.doe@example.com for details.", [("EMAIL", "jane.doe@example.com")]),
    (
        "email_plus_subdomain",
        "Send it to john.smith+newsletter@mail.example.co.uk please",
        [("EMAIL", "john.smith+newsletter@mail.example.co.uk")],
    ),
    ("email_caps_digits", "My work address is J.Smith42@Company-Mail.org.", [("EMAIL", "J.Smith42@Company-Mail.org")]),
    ("email_apostrophe_angle", "From: Bob <bob_o'neil@example.io>", [("EMAIL", "bob_o'neil@example.io")]),
    ("email_parens_long_tld", "(reach me: x_y-z@sub.domain.travel)", [("EMAIL", "x_y-z@sub.domain.travel")]),
    # PHONE
    ("phone_us_parens", "Call me at (415) 867-5309 tomorrow.", [("PHONE", "(415) 867-5309")]),
    ("phone_us_dots", "My cell is 415.867.5309.", [("PHONE", "415.867.5309")]),
    ("phone_us_intl", "Call me at +1 415-867-5309 after lunch.", [("PHONE", "+1 415-867-5309")]),
    ("phone_uk_intl", "UK office: +44 20 7946 0018, ask for Sam.", [("PHONE", "+44 20 7946 0018")]),
    ("phone_de_intl", "Berlin desk: +49 30 901820.", [("PHONE", "+49 30 901820")]),
    ("phone_uk_national", "The London line 020 7946 0958 is staffed.", [("PHONE", "020 7946 0958")]),
    ("phone_fr_intl", "Paris +33 1 42 68 53 00 ask for Marie", [("PHONE", "+33 1 42 68 53 00")]),
    ("phone_in_intl", "WhatsApp +91 98765 43210 anytime", [("PHONE", "+91 98765 43210")]),
    ("phone_bare_with_context", "my phone number is 4158675309", [("PHONE", "4158675309")]),
    # CREDIT_CARD
    ("card_visa_spaces", "My card is 4111 1111 1111 1111, exp 12/27.", [("CREDIT_CARD", "4111 1111 1111 1111")]),
    ("card_mc_dashes", "Charge 5500-0000-0000-0004 please", [("CREDIT_CARD", "5500-0000-0000-0004")]),
    ("card_amex_bare", "Amex 378282246310005 on file", [("CREDIT_CARD", "378282246310005")]),
    ("card_amex_grouped", "Amex 3782 822463 10005 on file", [("CREDIT_CARD", "3782 822463 10005")]),
    ("card_visa_bare", "card 4242424242424242 cvv 123", [("CREDIT_CARD", "4242424242424242")]),
    ("card_discover", "Discover 6011 1111 1111 1117 works", [("CREDIT_CARD", "6011 1111 1111 1117")]),
    # IBAN
    ("iban_de_spaced", "My IBAN is DE89 3704 0044 0532 0130 00.", [("IBAN", "DE89 3704 0044 0532 0130 00")]),
    ("iban_gb_compact", "Pay GB82WEST12345698765432 by Friday", [("IBAN", "GB82WEST12345698765432")]),
    ("iban_fr_letters", "FR: FR14 2004 1010 0505 0001 3M02 606 ok", [("IBAN", "FR14 2004 1010 0505 0001 3M02 606")]),
    ("iban_nl", "Dutch account NL91ABNA0417164300", [("IBAN", "NL91ABNA0417164300")]),
    ("iban_ch", "CH93 0076 2011 6238 5295 7 (Zurich)", [("IBAN", "CH93 0076 2011 6238 5295 7")]),
    ("iban_be", "Belgian account BE68539007547034.", [("IBAN", "BE68539007547034")]),
    # SSN
    ("ssn_dashes", "For the identity check my SSN is 123-45-6789.", [("SSN", "123-45-6789")]),
    ("ssn_spaces", "social security number 219 09 9999 thanks", [("SSN", "219 09 9999")]),
    ("ssn_parens", "(SSN: 536-22-8726)", [("SSN", "536-22-8726")]),
    ("ssn_078", "The card said 078-05-1120 on it", [("SSN", "078-05-1120")]),
    # IP_ADDRESS
    ("ipv4_global", "The server IP is 8.8.8.8.", [("IP_ADDRESS", "8.8.8.8")]),
    ("ipv4_port", "connect to 172.217.16.142:443 now", [("IP_ADDRESS", "172.217.16.142")]),
    ("ipv4_url", "open http://93.184.216.34/index.html", [("IP_ADDRESS", "93.184.216.34")]),
    ("ipv6_compressed", "resolver 2001:4860:4860::8888 answered", [("IP_ADDRESS", "2001:4860:4860::8888")]),
    ("ipv6_cloudflare", "DNS is 2606:4700:4700::1111, fallback none", [("IP_ADDRESS", "2606:4700:4700::1111")]),
    # MAC_ADDRESS
    ("mac_colon", "wifi card aa:bb:cc:dd:ee:ff is blocked", [("MAC_ADDRESS", "aa:bb:cc:dd:ee:ff")]),
    ("mac_dash_upper", "Mac 3C-52-82-1A-2B-3C here", [("MAC_ADDRESS", "3C-52-82-1A-2B-3C")]),
    ("mac_cisco", "router a0b1.c2d3.e4f5 ok", [("MAC_ADDRESS", "a0b1.c2d3.e4f5")]),
    ("mac_colon_mixed_case", "nic 00:1A:2b:3C:4d:5E end", [("MAC_ADDRESS", "00:1A:2b:3C:4d:5E")]),
    # SECRET
    (
        "secret_openai_project",
        "I pasted my developer key by mistake: sk-proj-4fJ9kL2mN8pQ1rS5tU7vW3xY6zA0bC.",
        [("SECRET", "sk-proj-4fJ9kL2mN8pQ1rS5tU7vW3xY6zA0bC")],
    ),
    (
        "secret_openai_legacy",
        "key sk-abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOP1234567890 end",
        [("SECRET", "sk-abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOP1234567890")],
    ),
    ("secret_aws", "aws key AKIAIOSFODNN7EXAMPLE leaked", [("SECRET", "AKIAIOSFODNN7EXAMPLE")]),
    (
        "secret_github_classic",
        "token ghp_abcdefghijklmnopqrstuvwxyzABCDEF123456 end",
        [("SECRET", "ghp_abcdefghijklmnopqrstuvwxyzABCDEF123456")],
    ),
    (
        "secret_github_fine_grained",
        "use github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGH",
        [("SECRET", "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGH")],
    ),
    (
        "secret_slack",
        "slack xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        [("SECRET", "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx")],
    ),
    (
        "secret_google",
        "google AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q ok",
        [("SECRET", "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q")],
    ),
    ("secret_stripe", "stripe sk_live_51H8abcdEFGHijklMNOPqrst here", [("SECRET", "sk_live_51H8abcdEFGHijklMNOPqrst")]),
    (
        "secret_bearer",
        'curl -H "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9abcdefghijklmnop" https://api.example.com',
        [("SECRET", "eyJhbGciOiJIUzI1NiJ9abcdefghijklmnop")],
    ),
    (
        "secret_jwt",
        "jwt eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
        "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U ok",
        [
            (
                "SECRET",
                "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            )
        ],
    ),
    ("secret_pem", f"here is my key:\n{PEM_KEY}\nthanks", [("SECRET", PEM_KEY)]),
    ("secret_password_assign", "login with password=Tr0ub4dor3 then", [("SECRET", "Tr0ub4dor3")]),
    ("secret_api_key_json", '{"api_key": "abcd1234efgh5678"}', [("SECRET", "abcd1234efgh5678")]),
    ("secret_env_var", "DB_PASSWORD=s3cr3t-P@ss", [("SECRET", "s3cr3t-P@ss")]),
    ("secret_colon_quoted", "client_secret: 'q8Z!x2#Lm'", [("SECRET", "q8Z!x2#Lm")]),
    ("secret_url_credentials", "postgres://admin:S3cretPw@db.example.com:5432/app", [("SECRET", "S3cretPw")]),
    (
        "secret_aws_secret_key",
        "export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        [("SECRET", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")],
    ),
    # Several entities in one message
    (
        "mixed_contact",
        "Call my UK office on +44 20 7946 0018 or email ops@nimbus-partner.co.uk.",
        [("PHONE", "+44 20 7946 0018"), ("EMAIL", "ops@nimbus-partner.co.uk")],
    ),
    (
        "mixed_payment",
        "Refund to DE89 3704 0044 0532 0130 00, not card 4111 1111 1111 1111; SSN 123-45-6789 on 2024-05-01.",
        [("IBAN", "DE89 3704 0044 0532 0130 00"), ("CREDIT_CARD", "4111 1111 1111 1111"), ("SSN", "123-45-6789")],
    ),
    (
        "mixed_ops",
        "Server 8.8.8.8 (mac aa:bb:cc:dd:ee:ff) runs v2.10.4 behind 192.168.1.1; api_key=AKIAIOSFODNN7EXAMPLE",
        [("IP_ADDRESS", "8.8.8.8"), ("MAC_ADDRESS", "aa:bb:cc:dd:ee:ff"), ("SECRET", "AKIAIOSFODNN7EXAMPLE")],
    ),
    (
        "mixed_multiline_chat",
        "user: hi, I'm Ana (ana.lopez@example.es), tel +34 912 345 678\n"
        "assistant: Thanks Ana! Your order #12345678 ships 05/01/2024 for $1,299.99.",
        [("EMAIL", "ana.lopez@example.es"), ("PHONE", "+34 912 345 678")],
    ),
    # Non-ASCII text around the entities
    (
        "non_ascii_german",
        "Grüße aus München! Ruf mich an: +49 30 901820 oder schreib an jürgen.müller@beispiel.de – danke.",
        [("PHONE", "+49 30 901820"), ("EMAIL", "jürgen.müller@beispiel.de")],
    ),
    ("non_ascii_cjk", "電話は+81 90-1234-5678です。", [("PHONE", "+81 90-1234-5678")]),
    ("non_ascii_emoji", "🎉 mail me 👉 jane.doe@example.com 🙏", [("EMAIL", "jane.doe@example.com")]),
]

# Strings that look like PII but are not; each must survive scrubbing as is.
LOOKALIKES: list[str] = [
    # version strings
    "Upgrade from 1.2.3 to the latest.",
    "Pinned to v2.10.4 for now.",
    "We run Python 3.11.7 in production.",
    "Windows build 10.0.19041.1 is affected.",
    "Set the firmware to version 1.2.3.4 first.",
    "tag v1.2.3.4 was pushed",
    # prices
    "The annual plan costs $1,299.99.",
    "Monthly it is €49.00 including VAT.",
    "The budget is USD 12,000 this quarter.",
    "That is 1,234,567.89 in total.",
    # dates
    "It shipped on 2024-05-01.",
    "Due on 05/01/2024 at the latest.",
    "The meeting is on 1 May 2024.",
    "Batch 20240501 was processed.",
    "Covered years 1990-2024.",
    "log line 2025-12-18 18-22-53 saved",
    # times
    "Let's meet at 12:30.",
    "The job started at 08:15:42.",
    "Timestamp 12:30:45.123 in the log.",
    # order and tracking numbers, IDs
    "Your order #12345678 has shipped.",
    "Reference ORD-2024-000123 in the email subject.",
    "UPS tracking 1Z999AA10123456784 shows delivered.",
    "Grant No. 0757627 funded this.",
    "ISBN 1-931666-22-9 is the second edition.",
    "The epoch time was 1714521600 exactly.",
    "See arXiv:2305.14314 for details.",
    # ZIP codes, quantities, percentages, short numbers
    "Ship to ZIP 94103, please.",
    "Add 3 x 250 ml of milk.",
    "Revenue grew 45% year over year, margin 12.5%.",
    "I am in room 1203 on floor 12.",
    "Call 911 in an emergency.",
    "The ratio is 16:9 and pi is 3.14159265358979.",
    # phone-shaped but invalid according to libphonenumber metadata
    "Placeholder (000) 000-0000 in the form.",
    "Dial 111 222 3333 for nothing.",
    "US numbers never start +1 123 456 7890.",
    "There is no country +99 123 456 789.",
    "Too short: +1 555 0100.",
    # checksum failures
    "Test number 1234 5678 9012 3456 fails Luhn.",
    "Card 4111 1111 1111 1112 has a typo.",
    "Loyalty id 8123 4567 8901 2340 passes Luhn but no issuer starts with 8.",
    "IBAN DE00 3704 0044 0532 0130 00 has a bad checksum.",
    "GB82 WEST 1234 5698 7654 33 is one digit off.",
    "SSN 000-12-3456 is never issued.",
    "SSN 666-12-3456 is never issued.",
    "SSN 900-12-3456 is an ITIN range.",
    "A bare 123456789 is not an SSN.",
    # hex-ish identifiers
    "Use the colour #a1b2c3 for the header.",
    "Fixed in commit 8843d7f92416211de9ebb963ff4ce28125932878.",
    "Short sha 8843d7f and 0x7fffffff mask.",
    "Request id 123e4567-e89b-12d3-a456-426614174000 failed.",
    "broadcast ff:ff:ff:ff:ff:ff is not a device",
    # non-personal IP addresses and colon code
    "My router is at 192.168.1.1 and the DB at 10.0.0.5.",
    "Bind to 127.0.0.1 or ::1 locally, link-local fe80::1.",
    "Slice with a[::2] or use std::vector<int> in C++.",
    # e-mail and secret look-alikes
    "Use logo@2x.png on retina screens.",
    "Mention @alice in the channel.",
    "We use sk-learn-style-hyphenated-names here.",
    "Password: reset it via the email link.",
    "api_key=os.environ.get('OPENAI_API_KEY')",
    "client = Client(api_key=api_key, token=self.token)",
    "connect(user=user, password=password, token=accessToken)",
    "Set max token: 512 for the reply.",
    "password=<SECRET> is already scrubbed.",
    "api_key=YOUR_API_KEY goes into .env",
    "password=${DB_PASS} comes from the environment",
    "The bearer of bad news arrived.",
    # product names and other digit-letter mixes
    "Samsung Galaxy S23 vs iPhone 15 Pro, PS5 and RTX4090.",
    "COVID19 cases and ISO 8601 dates.",
    "Page 12 of 345, between 1000 and 2000 words.",
]


def _pairs(matches: list[PiiMatch]) -> list[tuple[str, str]]:
    return [(m.type, m.text) for m in matches]


@pytest.mark.parametrize(
    ("text", "expected"), [(t, e) for _, t, e in POSITIVE_CASES], ids=[c for c, _, _ in POSITIVE_CASES]
)
def test_detects_labeled_pii(text: str, expected: Expected) -> None:
    matches = find_pii(text)
    assert _pairs(matches) == expected
    for m in matches:
        assert text[m.start : m.end] == m.text


@pytest.mark.parametrize(
    ("text", "expected"), [(t, e) for _, t, e in POSITIVE_CASES], ids=[c for c, _, _ in POSITIVE_CASES]
)
def test_scrub_replaces_with_typed_placeholders(text: str, expected: Expected) -> None:
    scrubbed, counts = scrub_pii(text)
    for typ, span in expected:
        assert span not in scrubbed
        assert placeholder(typ) in scrubbed
    assert counts == dict(Counter(t for t, _ in expected))
    # Reconstructing by hand pins the exact replacement positions.
    manual, pos = [], 0
    for m in find_pii(text):
        manual += [text[pos : m.start], placeholder(m.type)]
        pos = m.end
    assert scrubbed == "".join(manual) + text[pos:]


@pytest.mark.parametrize("text", LOOKALIKES)
def test_lookalikes_survive_unchanged(text: str) -> None:
    assert _pairs(find_pii(text)) == []
    assert scrub_pii(text) == (text, {})


@pytest.mark.parametrize("text", [t for _, t, _ in POSITIVE_CASES] + LOOKALIKES)
def test_scrubbing_is_idempotent(text: str) -> None:
    once, _ = scrub_pii(text)
    assert find_pii(once) == []
    assert scrub_pii(once) == (once, {})


def test_matches_are_sorted_and_non_overlapping() -> None:
    text = " | ".join(t for _, t, _ in POSITIVE_CASES)
    matches = find_pii(text)
    assert len(matches) == sum(len(e) for _, _, e in POSITIVE_CASES)
    for a, b in pairwise(matches):
        assert a.end <= b.start


def test_counts_only_nonzero_types() -> None:
    text = "Mail a@example.com, b@example.org or call (415) 867-5309; IP 8.8.8.8."
    scrubbed, counts = scrub_pii(text)
    assert scrubbed == "Mail <EMAIL>, <EMAIL> or call <PHONE>; IP <IP_ADDRESS>."
    assert counts == {"EMAIL": 2, "PHONE": 1, "IP_ADDRESS": 1}


def test_empty_and_whitespace() -> None:
    assert find_pii("") == []
    assert scrub_pii("") == ("", {})
    assert scrub_pii("   \n\t ") == ("   \n\t ", {})


def test_non_ascii_text_without_pii_is_untouched() -> None:
    text = "Ünïcödé ✓ — “quoted” 日本語のテキスト 🎉 Привет, как дела? 3 × 250 ml"
    assert scrub_pii(text) == (text, {})


def test_placeholders() -> None:
    assert [placeholder(t) for t in PII_TYPES] == [
        "<EMAIL>",
        "<PHONE>",
        "<CREDIT_CARD>",
        "<IBAN>",
        "<SSN>",
        "<IP_ADDRESS>",
        "<MAC_ADDRESS>",
        "<SECRET>",
    ]
    with pytest.raises(KeyError):
        placeholder("NAME")
    # A text made only of placeholders is itself clean.
    assert find_pii(" ".join(placeholder(t) for t in PII_TYPES)) == []


def test_config_defaults() -> None:
    assert PiiConfig() == DEFAULT_PII_CONFIG
    assert DEFAULT_PII_CONFIG.entities == PII_TYPES
    assert DEFAULT_PII_CONFIG.phone_regions == ("US", "GB", "DE", "FR", "IN", "CA", "BR")
    assert DEFAULT_PII_CONFIG.redact_private_ips is False


def test_config_entities_subset() -> None:
    text = "Mail jane.doe@example.com or call (415) 867-5309 from 8.8.8.8."
    assert _pairs(find_pii(text, PiiConfig(entities=("EMAIL",)))) == [("EMAIL", "jane.doe@example.com")]
    scrubbed, counts = scrub_pii(text, PiiConfig(entities=("PHONE", "IP_ADDRESS")))
    assert scrubbed == "Mail jane.doe@example.com or call <PHONE> from <IP_ADDRESS>."
    assert counts == {"PHONE": 1, "IP_ADDRESS": 1}
    assert find_pii(text, PiiConfig(entities=())) == []


def test_config_redact_private_ips() -> None:
    text = "LAN 192.168.1.1, loopback 127.0.0.1 and ::1, link-local fe80::1, public 8.8.8.8"
    assert _pairs(find_pii(text)) == [("IP_ADDRESS", "8.8.8.8")]
    redacted = _pairs(find_pii(text, PiiConfig(redact_private_ips=True)))
    assert redacted == [
        ("IP_ADDRESS", "192.168.1.1"),
        ("IP_ADDRESS", "127.0.0.1"),
        ("IP_ADDRESS", "::1"),
        ("IP_ADDRESS", "fe80::1"),
        ("IP_ADDRESS", "8.8.8.8"),
    ]


def test_config_phone_regions() -> None:
    uk_national = "The London line 020 7946 0958 is staffed."
    assert _pairs(find_pii(uk_national, PiiConfig(phone_regions=("GB",)))) == [("PHONE", "020 7946 0958")]
    # A national UK number is not valid when only US rules apply...
    assert find_pii(uk_national, PiiConfig(phone_regions=("US",))) == []
    # ...while +country numbers do not depend on the regions.
    assert _pairs(find_pii("+44 20 7946 0018", PiiConfig(phone_regions=("US",)))) == [("PHONE", "+44 20 7946 0018")]


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        PiiConfig(entities=("EMAIL", "NAME"))
    with pytest.raises(ValueError):
        PiiConfig(phone_regions=("XX",))
    # Lists are normalised to tuples so configs stay hashable.
    assert PiiConfig(entities=["EMAIL"]).entities == ("EMAIL",)  # type: ignore[arg-type]
    hash(PiiConfig(entities=["EMAIL"]))  # type: ignore[arg-type]


def test_precision_and_recall_per_type() -> None:
    """Micro precision/recall per type over the whole labeled corpus."""
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    corpus = [(t, e) for _, t, e in POSITIVE_CASES] + [(t, []) for t in LOOKALIKES]
    for text, expected in corpus:
        want = Counter(expected)
        got = Counter(_pairs(find_pii(text)))
        for (typ, _), n in (want & got).items():
            tp[typ] += n
        for (typ, _), n in (got - want).items():
            fp[typ] += n
        for (typ, _), n in (want - got).items():
            fn[typ] += n

    rows = []
    for typ in PII_TYPES:
        precision = tp[typ] / (tp[typ] + fp[typ]) if tp[typ] + fp[typ] else 1.0
        recall = tp[typ] / (tp[typ] + fn[typ]) if tp[typ] + fn[typ] else 1.0
        rows.append((typ, tp[typ], fp[typ], fn[typ], precision, recall))
    print(f"\n{'type':<12} {'tp':>4} {'fp':>4} {'fn':>4} {'precision':>10} {'recall':>8}")
    for typ, t, f, n, p, r in rows:
        print(f"{typ:<12} {t:>4} {f:>4} {n:>4} {p:>10.3f} {r:>8.3f}")

    # Every type is exercised by at least four labeled spans.
    assert all(t >= 4 for _, t, _, _, _, _ in rows), rows
    assert all(p == 1.0 and r == 1.0 for _, _, _, _, p, r in rows), rows
