"""Deterministic sample conversation logs (``ft-pipeline sample-data DIR``).

A few hundred customer-support conversations spread over five files in every accepted format,
with every problem the pipeline handles planted on purpose, so a demo run shows each quarantine
reason, filter reason, PII type and duplicate kind. The same seed always gives the same bytes.

The two JSONL log files also carry the preference signals ``preference_dataset`` learns from, in
the shares of :data:`SIGNAL_SHARES`: thumbs up and down, replies an agent edited before sending
(``edited`` with ``original_content``), and replies the user regenerated away from
(``regenerated``) next to the answer they accepted.

The conversations are what fine-tuning is for: a support assistant with a house style (a fixed
opener that greets the customer by the name they signed with, a reference code
``Ref: <PRODUCT>-<INTENT>``, a signature) and facts about its fictional products and policies
(reset buttons and times, prices, delivery times) that a pretrained base model cannot know. A
fine-tuned model learns them from the training split; the test split asks the same kinds of
questions with other customers' details.
"""

from __future__ import annotations

import gzip
import io
import json
import random
from pathlib import Path
from typing import Any

import pandas as pd

SYSTEM_PROMPT = "You are Nimbus Care, the support assistant of Nimbus Home."

# The house style a fine-tuned model has to learn, and a base model cannot guess: every reply opens
# with the same line, states facts about Nimbus Home's (fictional) products and policies, and ends
# with a reference code in a fixed format and the team's signature. The facts are consistent across
# the whole sample, so the test split asks about facts the training split teaches.
OPENER = "Thanks for contacting Nimbus Care, {customer}."
SIGNATURE = "– Nimbus Care"

PRODUCT_FACTS: dict[str, dict[str, Any]] = {
    "Nimbus Hub": {
        "code": "HUB",
        "button": "Link",
        "seconds": 10,
        "light": "white",
        "label": "base",
        "power": "runs on mains power only",
        "care": "$4.99",
        "warranty": 2,
    },
    "Nimbus Cam 2": {
        "code": "CAM",
        "button": "Reset",
        "seconds": 15,
        "light": "blue",
        "label": "stand",
        "power": "battery lasts about 4 months",
        "care": "$3.99",
        "warranty": 2,
    },
    "Nimbus Doorbell": {
        "code": "DBL",
        "button": "Chime",
        "seconds": 8,
        "light": "green",
        "label": "back plate",
        "power": "battery lasts about 6 months",
        "care": "$2.99",
        "warranty": 3,
    },
    "Nimbus Thermostat": {
        "code": "THM",
        "button": "Dial",
        "seconds": 20,
        "light": "amber",
        "label": "wall plate",
        "power": "runs on the heating system's C-wire",
        "care": "$1.99",
        "warranty": 5,
    },
    "Nimbus Plug": {
        "code": "PLG",
        "button": "Power",
        "seconds": 5,
        "light": "red",
        "label": "side",
        "power": "needs no battery",
        "care": "$0.99",
        "warranty": 1,
    },
    "Nimbus Lock": {
        "code": "LCK",
        "button": "Inner",
        "seconds": 12,
        "light": "purple",
        "label": "battery cover",
        "power": "four AA batteries last about 9 months",
        "care": "$2.49",
        "warranty": 3,
    },
    "Nimbus Sensor Kit": {
        "code": "SNS",
        "button": "Pair",
        "seconds": 6,
        "light": "yellow",
        "label": "mounting clip",
        "power": "coin cells last about 1 year",
        "care": "$1.49",
        "warranty": 2,
    },
}
PRODUCTS = list(PRODUCT_FACTS)
ROOMS = ["kitchen", "hallway", "garage", "living room", "office", "nursery", "porch", "bedroom", "basement", "attic"]
CUSTOMERS = [
    "Alex",
    "Bea",
    "Chris",
    "Dana",
    "Eli",
    "Farah",
    "Gus",
    "Hana",
    "Ivo",
    "Jade",
    "Kai",
    "Luis",
    "Maya",
    "Nico",
    "Olga",
    "Pete",
    "Quinn",
    "Rhea",
    "Sven",
    "Tara",
    "Uma",
    "Viktor",
    "Wen",
    "Yara",
    "Zoe",
]
OWNER_NAMES = ["Sam", "Priya", "Marco", "Lena", "Tom", "Aisha", "Jonas", "Mei", "Oscar", "Nadia", "Felix", "Rosa"]

# Intent -> (tag, customer phrasings, the house answer, a follow-up question and its answer).
# Phrasings hold per-customer details ({room}, {order}, {days}, {name}); answers echo some of them.
INTENTS: dict[str, dict[str, Any]] = {
    "CHARGE": {
        "tag": "billing",
        "asks": [
            "I was charged twice for my {product} Care plan this month.",
            "There are two charges for {product} Care on my card statement, can you check?",
            "Why did you bill me twice this month for the {product} subscription?",
        ],
        "answer": (
            "The second {product} Care charge is a temporary hold and drops off within 3 business days. If it "
            "is still there on day 4, reply with your order {order} and I refund it at once."
        ),
        "follow": (
            "Will I get an email about it?",
            "Yes, you get an email from Nimbus Billing when the hold is released. Your order {order} needs nothing "
            "else from you.",
        ),
    },
    "PLAN": {
        "tag": "billing",
        "asks": [
            "How much does the Care plan for the {product} cost?",
            "What is the price of {product} Care, and what does it add?",
            "I am thinking about the Care plan for my {product}, what does it cost?",
        ],
        "answer": (
            "{product} Care costs {care} per month. It adds 30 days of video history, priority support and an "
            "extended warranty of {warranty_plus} years. You can cancel it any time in the app."
        ),
        "follow": (
            "Can I switch to yearly billing?",
            "Yes, under Account > Plans > Billing cycle. Yearly billing gives you two months free on {product} Care.",
        ),
    },
    "REFUND": {
        "tag": "billing",
        "asks": [
            "My refund for the {product} I sent back has not arrived, it has been {days} days.",
            "I returned the {product} {days} days ago and I still have no refund.",
            "Where is my refund for order {order}? I returned the {product}.",
        ],
        "answer": (
            "Refunds are sent within 5 business days of the return scan and show as NIMBUS*RETURN on your "
            "statement. I checked order {order}: the {product} was scanned, so the refund is on its way."
        ),
        "follow": (
            "What if it still does not show up?",
            "If NIMBUS*RETURN is not on your statement after 5 business days, reply here with order {order} and I "
            "escalate it to Billing the same day.",
        ),
    },
    "LATE": {
        "tag": "shipping",
        "asks": [
            "My {product} order {order} has not arrived and tracking has not changed for {days} days.",
            "Order {order} for a {product} is late, tracking shows nothing new.",
            "Where is my {product}? I ordered it {days} days ago, order {order}.",
        ],
        "answer": (
            "Orders ship from our Leeds warehouse within 24 hours and take 2 to 4 business days. I checked "
            "order {order}: it is with the carrier, and you can follow it at nimbus.example/track."
        ),
        "follow": (
            "And if it is lost?",
            "If order {order} has not arrived after 7 business days, I send a new {product} by express at no charge.",
        ),
    },
    "DAMAGED": {
        "tag": "shipping",
        "asks": [
            "The box of my {product} arrived damaged, order {order}.",
            "My new {product} came with a cracked case, what should I do?",
            "The {product} from order {order} arrived broken.",
        ],
        "answer": (
            "I am sorry it arrived damaged. Send a photo under Orders > Report a problem and I ship a new "
            "{product} by express at no charge. You do not need to return the damaged one."
        ),
        "follow": (
            "How fast does the replacement come?",
            "Express replacements leave the Leeds warehouse the same day and arrive in 1 to 2 business days.",
        ),
    },
    "ABROAD": {
        "tag": "shipping",
        "asks": [
            "Do you ship the {product} to Canada?",
            "Can I order a {product} to an address in Germany?",
            "I live in Ireland, can you deliver the {product} there?",
        ],
        "answer": (
            "We ship the {product} to the UK, the EU and Canada. Delivery takes 5 to 8 business days and "
            "duties are included in the price, so there is nothing to pay on arrival."
        ),
        "follow": (
            "Does the warranty still apply abroad?",
            "Yes, the {warranty}-year {product} warranty applies in every country we ship to.",
        ),
    },
    "WIFI": {
        "tag": "setup",
        "asks": [
            "My {product} in the {room} will not connect to the wifi after the update.",
            "The {product} in our {room} keeps dropping off the network.",
            "Since yesterday the {room} {product} shows offline in the app.",
        ],
        "answer": (
            "The {product} only joins 2.4 GHz Wi-Fi. Hold the {button} button for {seconds} seconds until the "
            "light turns {light}, then add the {room} {product} again in the app."
        ),
        "follow": (
            "It is still offline, what now?",
            "Move the {product} closer to the router for setup and try again. If the light never turns {light}, "
            "reply here and I open a replacement case.",
        ),
    },
    "PAIR": {
        "tag": "setup",
        "asks": [
            "How do I pair the {product} with the Nimbus app on a new phone?",
            "I got a new phone, how do I add my {product} again?",
            "How do I set up the {product} for the {room}?",
        ],
        "answer": (
            "Open the Nimbus app, tap + and choose {product}. Scan the code on the {label} and keep the phone "
            "within 2 metres until the light turns {light}. Pairing takes about a minute."
        ),
        "follow": (
            "Where exactly is the code?",
            "The setup code of the {product} is printed on the {label}, next to the serial number.",
        ),
    },
    "POWER": {
        "tag": "setup",
        "asks": [
            "How long does the battery of the {product} last?",
            "Does the {product} in the {room} need new batteries soon?",
            "What powers the {product}, and how often do I need to charge it?",
        ],
        "answer": (
            "The {product} {power}. The app warns you 14 days before it needs attention, under Devices > "
            "{product} > Power."
        ),
        "follow": (
            "Will it warn me by email too?",
            "Yes, Nimbus also sends an email 14 days ahead, and again 3 days ahead, for the {product}.",
        ),
    },
    "LOGIN": {
        "tag": "account",
        "asks": [
            "I cannot log in to my Nimbus account after resetting my password.",
            "The app says my password is wrong, but I just reset it.",
            "I am locked out of the Nimbus app, my {product} is still running.",
        ],
        "answer": (
            "Reset links are valid for 30 minutes and only the newest one works. Tap Forgot password once, use "
            "the link within 30 minutes, and sign in again. Your {product} keeps running meanwhile."
        ),
        "follow": (
            "The link never arrives.",
            "Reset emails come from Nimbus Accounts within 2 minutes. Check the spam folder, or tap Forgot password "
            "again after 5 minutes.",
        ),
    },
    "SHARE": {
        "tag": "account",
        "asks": [
            "How do I give {name} access to the {product}?",
            "Can my partner {name} also control the {product}?",
            "I want {name} to see the {product} in the app too.",
        ],
        "answer": (
            "Go to Settings > Household > Invite and enter {name}'s email. A home can have up to 6 members, "
            "and the invite expires after 7 days. {name} then sees the {product} in the app."
        ),
        "follow": (
            "Can I limit what {name} can do?",
            "Yes, under Settings > Household > {name} you can set the role to Guest, who can use the {product} but "
            "not change its settings.",
        ),
    },
    "DELETE": {
        "tag": "account",
        "asks": [
            "I want to delete my account and everything the {product} recorded.",
            "Please remove my data, including the {product} history.",
            "How do I close my Nimbus account? I no longer use the {product}.",
        ],
        "answer": (
            "Go to Settings > Privacy > Delete account. Your recordings and the {product} history are erased "
            "within 30 days, and we email you a confirmation when it is done."
        ),
        "follow": (
            "Can I keep a copy first?",
            "Yes, Settings > Privacy > Export data gives you a download link within 24 hours, valid for 7 days.",
        ),
    },
}
TOPICS = sorted({intent["tag"] for intent in INTENTS.values()})
CONTEXT = [
    "It started last week.",
    "This is the second time it happened.",
    "I am using the app on Android.",
    "I already restarted everything twice.",
    "I bought it as a gift.",
    "My partner noticed it first.",
    "I am on the latest app version.",
    "We moved house last month.",
    "I use an iPhone.",
    "",
]
SIGN_OFFS = [
    "Thanks, {customer}",
    "Please help. {customer}",
    "Any ideas? - {customer}",
    "Thank you in advance, {customer}",
    "What can I do? {customer}",
    "Cheers, {customer}",
    "Regards, {customer}",
]
CLOSING_ASK = "Thanks, that is all."
CLOSING_ANSWER = "You are welcome. Your case {ref} stays open for 14 days if you need us again."
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


def _house_reply(customer: str, body: str, ref: str) -> str:
    """A reply in the house format: the opener with the customer's name (from their sign-off), the
    answer, the reference code, the signature."""
    return f"{OPENER.format(customer=customer)} {body} Ref: {ref}. {SIGNATURE}"


def _conversation(rng: random.Random, index: int, *, turns: int | None = None) -> dict[str, Any]:
    intent_name = rng.choice(sorted(INTENTS))
    intent = INTENTS[intent_name]
    product = rng.choice(PRODUCTS)
    facts = PRODUCT_FACTS[product]
    days = rng.randint(3, 12)
    slots = {
        **facts,
        "product": product,
        "room": rng.choice(ROOMS),
        "name": rng.choice(OWNER_NAMES),
        "days": days,
        "order": f"NH-{rng.randint(10000, 99999)}",
        "warranty_plus": facts["warranty"] + 1,
        "customer": rng.choice(CUSTOMERS),
    }
    ref = f"{facts['code']}-{intent_name}"
    first = " ".join(part for part in (rng.choice(intent["asks"]), rng.choice(CONTEXT), rng.choice(SIGN_OFFS)) if part)
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": first.format(**slots)},
        {"role": "assistant", "content": _house_reply(slots["customer"], intent["answer"].format(**slots), ref)},
    ]
    n_turns = turns if turns is not None else rng.choice([1, 1, 1, 2, 2, 3])
    if n_turns >= 2:
        ask, answer = intent["follow"]
        messages.append({"role": "user", "content": ask.format(**slots)})
        messages.append({"role": "assistant", "content": _house_reply(slots["customer"], answer.format(**slots), ref)})
    for _ in range(n_turns - 2):
        messages.append({"role": "user", "content": CLOSING_ASK})
        messages.append(
            {"role": "assistant", "content": _house_reply(slots["customer"], CLOSING_ANSWER.format(ref=ref), ref)}
        )
    return {
        "conversation_id": f"conv-{index:05d}",
        "user_id": f"user-{rng.randint(1, 120):04d}",
        "created_at": f"2024-05-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z",
        "messages": messages,
        "rating": rng.choice([4, 5, 5, 5, 4, None]),
        "response_time_ms": rng.randint(300, 4500),
        "edited": False,
        "tags": [intent["tag"]],
    }


# Replies people reject: deflections that answer nothing. With the house-style drafts below (the
# right answer without the opener, the reference code and the signature) they are the rejected
# side of the sample's preference signals.
DEFLECTIONS = [
    "I'm sorry, I can't help with that here. Please check the Nimbus Home website for more information.",
    "Please restart the device and try again. If that does not work, contact our support team by phone.",
    "I am not sure about that one. You could try searching the community forum, someone may know.",
    "That sounds frustrating. Unfortunately I do not have any information about this issue at the moment.",
]

# Shares of the conversations in the two JSONL log files that carry a preference signal, as a
# support product with feedback buttons, a regenerate button and agent-assisted replies logs them:
# thumbs are given on a minority of replies and mostly up; agents edit a draft before sending it
# on a tenth of the conversations; users ask for another answer on about one in ten.
SIGNAL_SHARES = {"thumbs_up": 0.12, "thumbs_down": 0.03, "edited": 0.10, "regenerated": 0.10}


def _draft_without_house_style(reply: str) -> str:
    """The answer of a house-style reply without its opener, reference code and signature: what
    the model drafted before an agent fixed it up."""
    body = reply.split(". ", 1)[1] if reply.startswith("Thanks for contacting") else reply
    return body.split(" Ref: ", 1)[0]


def _rejected_reply(rng: random.Random, good_reply: str) -> str:
    return rng.choice([_draft_without_house_style(good_reply), rng.choice(DEFLECTIONS)])


def preference_signal_records(
    rng: random.Random, good: list[dict[str, Any]], new_conversation: Any, new_id: Any
) -> list[dict[str, Any]]:
    """The sample's preference signals (:data:`SIGNAL_SHARES` of ``good``, the JSONL files'
    conversations): thumbs up set on some of ``good`` in place; new conversations an agent edited
    (``edited: true`` with the model's ``original_content``); new conversations marked thumbs down
    on a rejected reply; and new conversations answered twice, first with a reply the user
    regenerated away from (``regenerated: true``), then with the accepted one. ``new_conversation()``
    makes a conversation, ``new_id()`` a conversation id. The regenerations come first, two records
    each (regenerated away, then accepted)."""
    n = len(good)
    records: list[dict[str, Any]] = []
    for conversation in rng.sample(good, round(n * SIGNAL_SHARES["thumbs_up"])):
        conversation["thumbs"] = "up"
    for _ in range(round(n * SIGNAL_SHARES["regenerated"])):
        accepted = new_conversation()
        regenerated_away = json.loads(json.dumps(accepted))
        regenerated_away["conversation_id"] = new_id()
        regenerated_away["messages"][-1]["content"] = _rejected_reply(rng, accepted["messages"][-1]["content"])
        regenerated_away["regenerated"] = True
        regenerated_away["rating"] = None  # people rate the answer they kept, not the one they replaced
        records += [regenerated_away, accepted]
    for _ in range(round(n * SIGNAL_SHARES["edited"])):
        record = new_conversation()
        record["edited"] = True
        record["original_content"] = _rejected_reply(rng, record["messages"][-1]["content"])
        records.append(record)
    for _ in range(round(n * SIGNAL_SHARES["thumbs_down"])):
        record = new_conversation()
        record["messages"][-1]["content"] = rng.choice(DEFLECTIONS)
        record["thumbs"] = "down"
        record["rating"] = None  # a thumbs down instead of a rating
        records.append(record)
    return records


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
    whitespace["messages"][1]["content"] = (
        "  " + whitespace["messages"][1]["content"].replace(" ", "   ", 3) + "\u200b\r\n\n\n"
    )
    planted.append(whitespace)
    # Duplicates: exact (same file and across files), near, prefix, branch.
    exact_in_file = variant(good[42], rating=4)
    planted.append(exact_in_file)
    near = variant(good[43])
    near["messages"][2]["content"] = near["messages"][2]["content"].replace(
        "Thanks for contacting", "Many thanks for contacting", 1
    )
    long_near_base = _conversation(rng, next(counter), turns=3)
    long_near = variant(long_near_base)
    long_near["messages"][-1]["content"] = long_near["messages"][-1]["content"].rstrip(".") + ", thanks."
    prefix_base = _conversation(rng, next(counter), turns=3)
    prefix = variant(prefix_base)
    prefix["messages"] = prefix["messages"][:3]
    branch_base = _conversation(rng, next(counter), turns=2)
    branch = variant(branch_base, rating=4)
    branch["messages"][-1]["content"] = "Let me check that for you. " + branch["messages"][-1]["content"]
    planted += [long_near_base, long_near, prefix_base, prefix, branch_base, branch, near]
    # Too long for the default 4096-token limit (about 16 KB of text).
    long_record = _conversation(rng, next(counter), turns=1)
    events = [
        "connected",
        "disconnected",
        "rebooted",
        "updated",
        "paired",
        "armed",
        "disarmed",
        "calibrated",
        "muted",
        "resumed",
    ]
    long_record["messages"][2]["content"] = "Here is the full event log you asked for. " + " ".join(
        f"Event {k}: sensor {rng.getrandbits(32):08x} {rng.choice(events)} at "
        f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}."
        for k in range(420)
    )
    planted.append(long_record)

    # Preference signals (thumbs, edits, regenerations) in the two JSONL log files, from a generator
    # of their own so every record above stays byte for byte what it was.
    signal_rng = random.Random(seed + 1)
    signals = preference_signal_records(
        signal_rng,
        good[:250],
        lambda: _conversation(signal_rng, next(counter)),
        lambda: f"conv-{next(counter):05d}",
    )

    # Records the reader must quarantine, as raw lines.
    bad_lines: list[bytes] = [
        b'{"conversation_id": "bad-json", "messages": [\n',
        b'{"conversation_id": "bad-utf8", "messages": [{"role": "user", "content": "caf\xe9"}]}\n',
        b'["a", "list", "not", "an", "object"]\n',
        _line({"conversation_id": "no-messages", "text": "hello"}),
        _line({"conversation_id": "messages-string", "messages": "user: hi / assistant: hello"}),
        _line({"conversation_id": "message-not-object", "messages": ["hi", "hello"]}),
        _line(
            {
                "conversation_id": "unknown-role",
                "messages": [{"role": "customer", "content": "hi"}, {"role": "assistant", "content": "hello"}],
            }
        ),
        _line(
            {"conversation_id": "no-content", "messages": [{"role": "user"}, {"role": "assistant", "content": "hello"}]}
        ),
        _line(
            {
                "conversation_id": "content-list",
                "messages": [{"role": "user", "content": ["hi"]}, {"role": "assistant", "content": "hello"}],
            }
        ),
        _line({"conversation_id": "rating-text", "rating": "five", "messages": good[50]["messages"]}),
        _line({"conversation_id": "bad-date", "created_at": "yesterday", "messages": good[51]["messages"]}),
        _line({"conversation_id": "empty", "messages": []}),
    ]
    oversize = _line(
        {
            "conversation_id": "oversize",
            "messages": [{"role": "user", "content": "x" * 300_000}, {"role": "assistant", "content": "ok"}],
        }
    )

    # Other accepted formats.
    openai_lines = [_line({"messages": c["messages"]}) for c in good[280:300]]
    sharegpt_lines = [
        _line(
            {
                "id": f"sharegpt-{k}",
                "conversations": [
                    {
                        "from": {"system": "system", "user": "human", "assistant": "gpt"}[m["role"]],
                        "value": m["content"],
                    }
                    for m in c["messages"]
                ],
            }
        )
        for k, c in enumerate(good[300:320])
    ]

    # Half to each file; an even cut inside the leading regenerations keeps each one in one file.
    half = min(len(signals) // 2, 2 * round(len(good[:250]) * SIGNAL_SHARES["regenerated"])) // 2 * 2
    day1 = good[:150] + planted[:20] + [good[42]] + signals[:half]
    day2 = good[150:250] + planted[20:] + signals[half:]
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
