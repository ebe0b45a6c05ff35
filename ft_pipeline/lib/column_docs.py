"""What each column of the pipeline's Parquet files holds: the descriptions the UI shows beside a
file's column schema (``dagster/column_schema``), one place for every stage."""

from __future__ import annotations

COLUMN_DESCRIPTIONS: dict[str, str] = {
    # The conversation record (lib/records.py), from parsing onwards.
    "conversation_id": "Id of the conversation in the source log (pseudonymized when it held PII).",
    "user_id": "Id of the end user (pseudonymized when it held PII); groups a user's conversations in one split.",
    "created_at": "When the conversation started (UTC), when the log says.",
    "messages": "The turns: list of {role, content}, PII scrubbed into typed placeholders.",
    "rating": "The user's rating (1-5) when the log holds one.",
    "response_time_ms": "Time the assistant took to answer, when logged.",
    "edited": "True when an agent edited the assistant's reply before sending.",
    "tags": "Topic or product tags from the log (used for stratified splits and per-tag metrics).",
    "metadata": "Other fields of the source record, as JSON text (PII scrubbed).",
    "source_format": "Format the record was read as (openai, sharegpt, …).",
    "source_file": "The landed file the record came from (the partition key).",
    "source_line": "Line (or row) of the record in its source file.",
    "pii_scrubbed": "Number of PII matches replaced in this record.",
    # Quarantine (raw_conversation_logs).
    "reason": "Reason code (its meaning is in the asset's reason table).",
    "detail": "What exactly was wrong, in one line.",
    "raw_text": "The record as read, PII scrubbed and shortened, so it can be fixed and re-landed.",
    # Filtered rows (cleaned_conversations).
    "filter_reason": "Why cleaning removed the conversation (reason code).",
    "filter_detail": "The value that failed the filter.",
    # Dedup and split signatures (cleaned_conversations onwards).
    "exact_hash": "Hash of the normalized conversation: equal hashes are exact duplicates.",
    "context_hash": "Hash of every turn but the final reply: regenerations of one prompt share it.",
    "prefix_hashes": "Hashes of each prefix of the conversation (finds prefix duplicates).",
    "minhash": "MinHash signature of the word shingles (near-duplicate detection).",
    "n_messages": "Number of turns.",
    "preference": "Quality score used to keep the best copy among duplicates (rating, not edited, faster).",
    "n_chars": "Characters in all turns.",
    "first_turn_hash": "Hash of the first user turn (conversations sharing a long first turn stay together).",
    "first_turn_words": "Words in the first user turn.",
    "final_reply_hash": "Hash of the final assistant reply.",
    # curated_dataset.
    "dedup_cluster": "Id of the near-duplicate cluster the kept conversation represents.",
    "n_tokens": "Tokens in the conversation (the curated dataset's token counter).",
    "n_assistant_tokens": "Tokens in the assistant turns (what training learns from).",
    "duplicate_of": "conversation_id of the copy that was kept instead.",
    # preference_dataset.
    "pair_id": "Stable id of the DPO pair (its conversations and rule).",
    "rule": "The signal that made the example: edit, regeneration, rating or thumbs.",
    "prompt": "Every message before the final assistant turn (PII scrubbed).",
    "chosen": "The preferred reply.",
    "rejected": "The reply the preferred one won against.",
    "chosen_conversation_id": "Conversation of the preferred reply.",
    "rejected_conversation_id": "Conversation of the rejected reply (the same one for an edit).",
    "example_id": "Stable id of the KTO example.",
    "completion": "The reply a KTO example labels.",
    "label": "True: a desirable reply; False: an undesirable one.",
    # Splits.
    "split": "train, validation or test (preferences: or excluded, touching the SFT test split and another).",
    "split_group": "Key of the group (user, shared context, shared first turn) that decided the split.",
    # augmented_train_split.
    "augmented_from": "conversation_id of the train example this is a perturbed copy of (null: an original).",
    "augmentation": "Perturbation of the copy's user turns: typos, case_whitespace or punctuation (null: an original).",
}
