"""Deterministic sample conversation logs (``ft-pipeline sample-data DIR``).

A few hundred customer-support conversations spread over five files in every accepted format,
with every problem the pipeline handles planted on purpose, so a demo run shows each quarantine
reason, filter reason, PII type and duplicate kind. The same seed always gives the same bytes.
"""

from __future__ import annotations

import gzip
import io
import json
import random
from pathlib import Path
from typing import Any

import pandas as pd

SYSTEM_PROMPT = "You are Nimbus, the support assistant of Nimbus Home, a smart-home device company."

PRODUCTS = ["Nimbus Hub", "Nimbus Cam 2", "Nimbus Doorbell", "Nimbus Thermostat", "Nimbus Plug", "Nimbus Lock", "Nimbus Sensor Kit"]
TOPICS = {
    "billing": [
        "I was charged twice for my {product} subscription this month.",
        "Can you explain the extra fee on my last invoice for the {product}?",
        "I want to switch my {product} plan from monthly to yearly billing.",
        "My refund for the returned {product} has not arrived yet.",
    ],
    "shipping": [
        "My {product} order has not arrived and the tracking page has not changed for {n} days.",
        "The box of my {product} arrived damaged, what should I do?",
        "Can I change the delivery address for the {product} I ordered yesterday?",
        "Do you ship the {product} to Canada, and how long does it take?",
    ],
    "setup": [
        "My {product} will not connect to my wifi network after the latest update.",
        "How do I pair the {product} with the Nimbus app on a new phone?",
        "The {product} keeps blinking orange during setup and never finishes.",
        "Can the {product} work with my existing smart speaker?",
    ],
    "account": [
        "I cannot log in to my Nimbus account after resetting my password.",
        "How do I add my partner as a second user for the {product}?",
        "I want to delete my account and all the recordings from the {product}.",
        "Two-factor codes for my account are not reaching my phone.",
    ],
}
OPENERS = [
    "Thanks for reaching out about this.",
    "I am sorry for the trouble with your {product}.",
    "Happy to help you sort this out.",
    "Thank you for the details, that helps a lot.",
    "I understand how frustrating that is.",
]
STEPS = {
    "billing": [
        "I checked the billing history and the second charge of {price} is a pending authorization that drops off within {n} business days.",
        "I have issued a refund of {price} to the original payment method, and it usually shows up within {n} business days.",
        "You can change the plan under Settings, then Subscription, then Billing cycle, and the new price applies from the next renewal.",
        "The extra line is the regional sales tax, which is added to every invoice for the {product} plan in your state.",
    ],
    "shipping": [
        "The carrier marked the parcel as delayed at the regional hub, and the new estimate is {n} business days from today.",
        "Please keep the damaged box and send a photo through the order page, and we will ship a replacement {product} at no charge.",
        "The address can be changed until the order leaves the warehouse, so I updated it for you right away.",
        "We ship the {product} to Canada with tracked delivery, which normally takes {n} to {m} business days.",
    ],
    "setup": [
        "Please hold the reset button on the back of the {product} for ten seconds until the light turns white, then run setup again.",
        "Make sure your phone is on the 2.4 GHz band during setup, because the {product} does not pair over 5 GHz networks.",
        "Open the Nimbus app, tap Add device, choose {product}, and scan the code printed under the battery cover.",
        "The {product} works with the major voice assistants once you link your Nimbus account in the assistant's app.",
    ],
    "account": [
        "I sent a fresh sign-in link to the address on file; it stays valid for {n} minutes.",
        "Shared access is under Settings, then Household, then Invite member, and the invite expires after {n} days.",
        "Account deletion removes every recording within {n} days, and you will receive a confirmation once it is done.",
        "Text messages can be delayed by some carriers, so you can switch two-factor codes to the authenticator app instead.",
    ],
}
CLOSERS = [
    "Is there anything else I can help you with today?",
    "Let me know if the issue comes back and I will look into it again.",
    "I have added a note to your account so the next agent can see this conversation.",
    "If you have more questions, just reply here at any time.",
]
FOLLOW_UPS = [
    "Thanks, and how long will that take?",
    "Okay, and will I get an email when it is done?",
    "Great, is there anything I need to do on my side?",
    "That makes sense, can you confirm it is all set?",
]
FOLLOW_UP_ANSWERS = [
    "It normally takes {n} business days, and you will get an email confirmation as soon as it is complete.",
    "Nothing else is needed on your side; the change is already active on your account and your {product}.",
    "Yes, everything is set, and you will see the update in the Nimbus app the next time you open it.",
    "You will receive an email once it is done, and the status is also visible under Orders in the app.",
]
# Text that looks like personal data but is not: it must survive scrubbing untouched.
LOOK_ALIKES = [
    "Your {product} should be on firmware version 4.2.17.3 after the update.",
    "The order number is ORD-2024-000123 and the total was $1,299.99.",
    "The replacement ships on 2024-05-14 and the courier arrives between 12:30 and 16:45.",
    "Order #48213377 was placed on 05/01/2024 at 08:15:42.",
]
# Personal data of every type the scrubber knows, planted in user turns.
PII_SNIPPETS = [
    "You can reach me at jane.doe@example.com if that helps.",
    "My phone number is (415) 867-5309, call me after five.",
    "Please charge the card 4111 1111 1111 1111 instead.",
    "My IBAN for the refund is DE89 3704 0044 0532 0130 00.",
    "For the identity check my SSN is 123-45-6789.",
    "The hub shows the public address 81.2.69.160 on its status page, and 8.8.8.8 as DNS.",
    "The device MAC is 3C:22:FB:1A:9E:04 according to the sticker.",
    "I pasted my developer key by mistake: sk-proj-4fJ9kL2mN8pQ1rS5tU7vW3xY6zA0bC.",
    "Call my UK office on +44 20 7946 0018 or email ops@nimbus-partner.co.uk.",
]


def _fill(rng: random.Random, template: str, product: str) -> str:
    n = rng.randint(2, 9)
    return template.format(product=product, n=n, m=n + rng.randint(2, 5), price=f"${rng.randint(5, 300)}.{rng.randint(0, 99):02d}")


def _conversation(rng: random.Random, index: int, *, turns: int | None = None) -> dict[str, Any]:
    topic = rng.choice(sorted(TOPICS))
    product = rng.choice(PRODUCTS)
    first = _fill(rng, rng.choice(TOPICS[topic]), product)
    first += " " + rng.choice(
        ["It started last week.", "This is the second time it happened.", "I am using the app on Android.", "I already restarted everything twice.",
         "I bought it as a gift.", "My partner noticed it first.", "I am on the latest app version.", "It is the one in the kitchen.", ""]
    ) + " " + rng.choice(["Thanks.", "Please help.", "Any ideas?", "Thank you in advance.", "What can I do?", ""])
    first = first.strip()
    reply = " ".join(
        [_fill(rng, rng.choice(OPENERS), product), _fill(rng, rng.choice(STEPS[topic]), product), _fill(rng, rng.choice(CLOSERS), product)]
    )
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": first}, {"role": "assistant", "content": reply}]
    for _ in range((turns if turns is not None else rng.choice([1, 1, 2, 2, 3])) - 1):
        messages.append({"role": "user", "content": rng.choice(FOLLOW_UPS)})
        messages.append({"role": "assistant", "content": _fill(rng, rng.choice(FOLLOW_UP_ANSWERS), product) + " " + _fill(rng, rng.choice(STEPS[topic]), product)})
    return {
        "conversation_id": f"conv-{index:05d}",
        "user_id": f"user-{rng.randint(1, 120):04d}",
        "created_at": f"2024-05-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z",
        "messages": messages,
        "rating": rng.choice([4, 5, 5, 5, 4, None]),
        "response_time_ms": rng.randint(300, 4500),
        "edited": False,
        "tags": [topic],
    }


def _line(record: Any) -> bytes:
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


def build_sample(seed: int = 7) -> dict[str, bytes]:
    """File name -> file bytes of the sample landing zone."""
    rng = random.Random(seed)
    counter = iter(range(1, 100_000))
    good = [_conversation(rng, next(counter)) for _ in range(330)]

    # Problems that cleaning handles, planted in copies of good conversations.
    def variant(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
        record = json.loads(json.dumps(base))
        record["conversation_id"] = f"conv-{next(counter):05d}"
        record.update(changes)
        return record

    planted: list[dict[str, Any]] = []
    for i, snippet in enumerate(PII_SNIPPETS):
        r = variant(good[i])
        r["messages"][1]["content"] += " " + snippet
        planted.append(r)
    for i, look_alike in enumerate(LOOK_ALIKES):
        r = variant(good[20 + i])
        r["messages"][2]["content"] += " " + look_alike.format(product=PRODUCTS[i])
        planted.append(r)
    planted.append(variant(good[30], rating=2))
    planted.append(variant(good[31], rating=1))
    planted.append(variant(good[32], response_time_ms=9100))
    planted.append(variant(good[33], edited=True))
    short = variant(good[34])
    short["messages"] = short["messages"][:2] + [{"role": "assistant", "content": "Done."}]
    planted.append(short)
    repetitive = variant(good[35])
    repetitive["messages"][2]["content"] = "Please try again. " * 20
    planted.append(repetitive)
    late_system = variant(good[36])
    late_system["messages"].append({"role": "system", "content": "Escalate to tier 2."})
    planted.append(late_system)
    only_user = variant(good[37])
    only_user["messages"] = [{"role": "user", "content": "Hello? Is anyone there?"}]
    planted.append(only_user)
    # Repairs: consecutive user messages merged, greeting before the user dropped, unanswered tail trimmed.
    merged = variant(good[38])
    merged["messages"].insert(2, {"role": "user", "content": "Sorry, I hit enter too early."})
    planted.append(merged)
    greeting = variant(good[39])
    greeting["messages"].insert(1, {"role": "assistant", "content": "Hi! I am Nimbus. How can I help you today?"})
    planted.append(greeting)
    tail = variant(good[40])
    tail["messages"].append({"role": "user", "content": "Hello?"})
    planted.append(tail)
    whitespace = variant(good[41])
    whitespace["messages"][1]["content"] = "  " + whitespace["messages"][1]["content"].replace(" ", "   ", 3) + "\u200b\r\n\n\n"
    planted.append(whitespace)
    # Duplicates: exact (same file and across files), near, prefix, branch.
    exact_in_file = variant(good[42], rating=4)
    planted.append(exact_in_file)
    near = variant(good[43])
    near["messages"][2]["content"] = near["messages"][2]["content"].replace("I", "We", 1)
    long_near_base = _conversation(rng, next(counter), turns=3)
    long_near = variant(long_near_base)
    long_near["messages"][-1]["content"] = long_near["messages"][-1]["content"].rstrip(".") + ", thanks."
    prefix_base = _conversation(rng, next(counter), turns=3)
    prefix = variant(prefix_base)
    prefix["messages"] = prefix["messages"][:3]
    branch_base = _conversation(rng, next(counter), turns=2)
    branch = variant(branch_base, rating=4)
    branch["messages"][-1]["content"] = "Let me check that for you. " + _fill(rng, STEPS["billing"][0], PRODUCTS[0])
    planted += [long_near_base, long_near, prefix_base, prefix, branch_base, branch, near]
    # Too long for the default 4096-token limit (about 16 KB of text).
    long_record = _conversation(rng, next(counter), turns=1)
    events = ["connected", "disconnected", "rebooted", "updated", "paired", "armed", "disarmed", "calibrated", "muted", "resumed"]
    long_record["messages"][2]["content"] = "Here is the full event log you asked for. " + " ".join(
        f"Event {k}: sensor {rng.getrandbits(32):08x} {rng.choice(events)} at {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}."
        for k in range(420)
    )
    planted.append(long_record)

    # Records the reader must quarantine, as raw lines.
    bad_lines: list[bytes] = [
        b'{"conversation_id": "bad-json", "messages": [\n',
        b'{"conversation_id": "bad-utf8", "messages": [{"role": "user", "content": "caf\xe9"}]}\n',
        b'["a", "list", "not", "an", "object"]\n',
        _line({"conversation_id": "no-messages", "text": "hello"}),
        _line({"conversation_id": "messages-string", "messages": "user: hi / assistant: hello"}),
        _line({"conversation_id": "message-not-object", "messages": ["hi", "hello"]}),
        _line({"conversation_id": "unknown-role", "messages": [{"role": "customer", "content": "hi"}, {"role": "assistant", "content": "hello"}]}),
        _line({"conversation_id": "no-content", "messages": [{"role": "user"}, {"role": "assistant", "content": "hello"}]}),
        _line({"conversation_id": "content-list", "messages": [{"role": "user", "content": ["hi"]}, {"role": "assistant", "content": "hello"}]}),
        _line({"conversation_id": "rating-text", "rating": "five", "messages": good[50]["messages"]}),
        _line({"conversation_id": "bad-date", "created_at": "yesterday", "messages": good[51]["messages"]}),
        _line({"conversation_id": "empty", "messages": []}),
    ]
    oversize = _line({"conversation_id": "oversize", "messages": [{"role": "user", "content": "x" * 300_000}, {"role": "assistant", "content": "ok"}]})

    # Other accepted formats.
    openai_lines = [_line({"messages": c["messages"]}) for c in good[280:300]]
    sharegpt_lines = [
        _line(
            {
                "id": f"sharegpt-{k}",
                "conversations": [{"from": {"system": "system", "user": "human", "assistant": "gpt"}[m["role"]], "value": m["content"]} for m in c["messages"]],
            }
        )
        for k, c in enumerate(good[300:320])
    ]

    day1 = good[:150] + planted[:20] + [good[42]]
    day2 = good[150:250] + planted[20:]
    files: dict[str, bytes] = {}
    body = b"".join(_line(r) for r in day1)
    lines1 = body.splitlines(keepends=True)
    # Interleave the bad lines, plus a blank line, so line numbers in the quarantine are realistic.
    for k, bad in enumerate(bad_lines):
        lines1.insert(7 + 13 * k, bad)
    lines1.insert(3, b"\n")
    files["support_2024-05-01.jsonl"] = b"".join(lines1)
    day2_body = b"".join(_line(r) for r in day2) + oversize + _line(good[10])  # good[10]: cross-file exact duplicate
    files["support_2024-05-02.jsonl.gz"] = gzip.compress(day2_body, mtime=0)
    files["exports_openai_sharegpt.jsonl"] = b"".join(openai_lines + sharegpt_lines)
    parquet_rows = good[250:280] + good[320:330]
    frame = pd.DataFrame(parquet_rows)
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    files["crm_export_2024-05.parquet"] = buffer.getvalue()
    # A gzip upload cut off mid-stream: the readable part is kept, the rest quarantined.
    truncated = gzip.compress(b"".join(_line(r) for r in good[320:330]), mtime=0)
    files["partial_upload_2024-05-03.jsonl.gz"] = truncated[: len(truncated) * 2 // 3]
    return files


def write_sample(directory: str | Path, seed: int = 7) -> list[Path]:
    """Write the sample files into ``directory`` (created if needed); returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in build_sample(seed).items():
        path = directory / name
        path.write_bytes(data)
        paths.append(path)
    return sorted(paths)
