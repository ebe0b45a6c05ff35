"""Offline token counting for dataset reports and OpenAI-format validation.

Three back-ends, chosen with :class:`TokenCounterConfig.tokenizer`:

* ``"estimate"`` (default) -- OpenAI's rule of thumb, "~4 characters per token
  for English": ``max(ceil(len(text) / 4), word_count)``.  No model files, no
  network, fast enough for millions of conversations.  Reports label it
  ``estimate:chars/4`` so nobody mistakes it for an exact count.
* ``"hf:<local dir or cached hub id>"`` -- a Hugging Face tokenizer loaded with
  ``local_files_only=True`` (the tokenizer of the model we actually fine-tune).
* ``"tiktoken:<encoding>"`` -- e.g. ``cl100k_base`` / ``o200k_base``, only when
  ``tiktoken`` is installed *and* the encoding file is already in tiktoken's
  local cache.  tiktoken silently downloads encodings on first use, so we check
  the cache ourselves and additionally block its downloader while loading.

Conversation counting follows the OpenAI cookbook convention
(``num_tokens_from_messages``): every message costs ``per_message_overhead``
(3) tokens for role/format markers plus the tokens of each of its values
(role, content, name, ...), ``name`` costs one extra token, and every
conversation costs 3 more tokens for reply priming.  Like the cookbook's own
numbers these are approximations ("not exact!"), but they are consistent,
which is what length filters and limit checks need.

This module is pure Python (numpy only at import time); never import dagster here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "REPLY_PRIMING_TOKENS",
    "TokenCounter",
    "TokenCounterConfig",
    "estimate_token_counts",
    "make_token_counter",
    "tiktoken_cache_dir",
    "token_stats",
]

#: Tokens added once per conversation for priming the reply
#: (``<|start|>assistant<|message|>`` in the cookbook's accounting).
REPLY_PRIMING_TOKENS = 3

#: Extra token for a message's ``name`` field (cookbook ``tokens_per_name``).
_TOKENS_PER_NAME = 1

#: Texts per call into a real tokenizer: big enough for the Rust tokenizers to
#: parallelise, small enough that the returned id lists do not blow up memory.
_HF_BATCH_SIZE = 4096

# Message keys that are training controls, not text the model sees.
_NON_TEXT_KEYS = frozenset({"weight"})


@dataclass(frozen=True)
class TokenCounterConfig:
    """How to count tokens.

    Attributes:
        tokenizer: ``"estimate"`` (default; chars/4 heuristic, no files needed),
            ``"hf:<local path or cached hub id>"`` (Hugging Face tokenizer, loaded
            with ``local_files_only=True``) or ``"tiktoken:<encoding name>"``
            (e.g. ``cl100k_base`` for gpt-3.5/gpt-4, ``o200k_base`` for the
            gpt-4o / gpt-4.1 family; the encoding must already be cached).
        per_message_overhead: tokens added per message for role/format markers
            (OpenAI cookbook convention: 3).  Each conversation additionally gets
            ``REPLY_PRIMING_TOKENS`` (3) for reply priming.
    """

    tokenizer: str = "estimate"
    per_message_overhead: int = 3


class TokenCounter:
    """Counts tokens of texts and of chat conversations with one back-end.

    Args:
        name: label that ends up in reports, e.g. ``"estimate:chars/4"`` or
            ``"hf:/models/qwen"``; it says where the numbers come from.
        count_batch: callable mapping a sequence of strings to their token
            counts (any int sequence / array of the same length).  Tests can
            pass a fake here.
        is_estimate: True when the numbers are a heuristic, not a real tokenizer.
        per_message_overhead: see :class:`TokenCounterConfig`.
    """

    def __init__(
        self,
        name: str,
        count_batch: Callable[[Sequence[str]], Any],
        is_estimate: bool = False,
        per_message_overhead: int = 3,
    ) -> None:
        self.name = name
        self.is_estimate = is_estimate
        self.per_message_overhead = int(per_message_overhead)
        self._count_batch = count_batch
        # Roles repeat millions of times but take a handful of values; caching
        # their counts keeps them out of the batched tokenizer call.
        self._role_cache: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"TokenCounter(name={self.name!r}, is_estimate={self.is_estimate})"

    def count_text(self, texts: Sequence[str]) -> np.ndarray:
        """Token count of each text, as an int64 array of ``len(texts)``."""
        if len(texts) == 0:
            return np.zeros(0, dtype=np.int64)
        counts = np.asarray(self._count_batch(texts), dtype=np.int64)
        if counts.shape != (len(texts),):
            raise ValueError(f"token counter {self.name!r} returned shape {counts.shape} for {len(texts)} texts")
        return counts

    def _role_tokens(self, role: str) -> int:
        cached = self._role_cache.get(role)
        if cached is None:
            cached = int(self.count_text([role])[0])
            if len(self._role_cache) < 1024:  # bound it: garbage roles must not leak memory
                self._role_cache[role] = cached
        return cached

    def count_conversations(self, conversations: Sequence[list[dict]]) -> tuple[np.ndarray, np.ndarray]:
        """Count tokens per conversation (list of ``{"role", "content", ...}`` dicts).

        Returns:
            ``(total, assistant)`` int64 arrays, one entry per conversation.
            ``total`` follows the cookbook's ``num_tokens_from_messages``: per
            message ``per_message_overhead`` + tokens of every value (role,
            content, name, tool_calls, ...; ``weight`` is a training control and
            is skipped) + 1 for ``name``; plus ``REPLY_PRIMING_TOKENS`` per
            conversation.  ``assistant`` is the tokens of assistant ``content``
            only (cookbook ``num_assistant_tokens_from_messages``).

        Malformed input never raises: non-dict messages are skipped, ``None``
        values cost nothing, and non-string values (``function_call`` dicts,
        ``tool_calls`` lists, numbers) are counted as their compact JSON text.
        A conversation that is not a list/tuple/ndarray counts as empty.
        """
        n = len(conversations)
        texts: list[str] = []
        overhead: list[int] = []  # per conversation: overhead + role + name tokens
        n_texts: list[int] = []  # per conversation: how many entries it added to `texts`
        assistant_idx: list[int] = []  # positions in `texts` holding assistant content
        per_msg = self.per_message_overhead
        role_cache = self._role_cache
        append = texts.append

        # One Python pass flattens everything into a single text batch so the
        # (numpy/Rust) counter sees large batches, not one call per message.  The
        # fast path covers the overwhelmingly common {"role": str, "content": str}.
        for conv in conversations:
            extra = REPLY_PRIMING_TOKENS
            first = len(texts)
            # ndarray: pandas/pyarrow hand list columns over as object arrays.
            if isinstance(conv, (list, tuple, np.ndarray)):
                for msg in conv:
                    if type(msg) is not dict and not isinstance(msg, dict):
                        continue
                    extra += per_msg
                    if len(msg) == 2:
                        role = msg.get("role")
                        content = msg.get("content")
                        if type(role) is str and type(content) is str:
                            role_tokens = role_cache.get(role)
                            extra += self._role_tokens(role) if role_tokens is None else role_tokens
                            if role == "assistant":
                                assistant_idx.append(len(texts))
                            append(content)
                            continue
                    extra += self._flatten_message(msg, texts, assistant_idx)
            overhead.append(extra)
            n_texts.append(len(texts) - first)

        total = np.asarray(overhead, dtype=np.int64).reshape(n)
        assistant_tokens = np.zeros(n, dtype=np.int64)
        if not texts:
            return total, assistant_tokens
        counts = self.count_text(texts)
        owner = np.repeat(np.arange(n, dtype=np.int64), np.asarray(n_texts, dtype=np.int64))
        # bincount with weights returns float64; exact for totals < 2**53.
        total += np.bincount(owner, weights=counts, minlength=n).astype(np.int64)
        if assistant_idx:
            idx = np.asarray(assistant_idx, dtype=np.int64)
            assistant_tokens += np.bincount(owner[idx], weights=counts[idx], minlength=n).astype(np.int64)
        return total, assistant_tokens

    def count_conversations_arrow(self, conversations: Any) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`count_conversations` of an Arrow column of conversations.

        ``conversations`` is a pyarrow ``list<struct<role: string, content: string>>`` array or
        chunked array (how ``messages`` is stored). The result equals
        ``count_conversations(conversations.to_pylist())``, but no Python dicts are built; for
        the estimate counter the whole count runs in Arrow compute kernels. Other layouts fall
        back to the Python path.
        """
        import pyarrow as pa

        if isinstance(conversations, pa.ChunkedArray):
            conversations = (
                conversations.chunk(0)
                if conversations.num_chunks == 1
                else conversations.combine_chunks()
                if conversations.num_chunks
                else pa.array([], conversations.type)
            )
        typ = conversations.type
        value_type = typ.value_type if pa.types.is_list(typ) or pa.types.is_large_list(typ) else None
        if (
            value_type is None
            or not pa.types.is_struct(value_type)
            or sorted(value_type.field(i).name for i in range(value_type.num_fields)) != ["content", "role"]
            or not all(_is_arrow_string(value_type.field(i).type) for i in range(value_type.num_fields))
        ):
            return self.count_conversations(conversations.to_pylist())
        import pyarrow.compute as pc

        n = len(conversations)
        total = np.full(n, REPLY_PRIMING_TOKENS, dtype=np.int64)
        assistant_tokens = np.zeros(n, dtype=np.int64)
        messages = pc.list_flatten(conversations)
        if len(messages) == 0:
            return total, assistant_tokens
        owner = pc.list_parent_indices(conversations).to_numpy()
        # flatten() applies the struct's own validity to its fields (a null message has neither).
        fields = dict(zip((value_type.field(i).name for i in range(value_type.num_fields)), messages.flatten()))
        role, content = fields["role"], fields["content"]
        present = messages.is_valid().to_numpy(zero_copy_only=False)
        if self._count_batch is estimate_token_counts:
            role_tokens = _arrow_estimates(role)
            content_tokens = _arrow_estimates(content)
        else:
            roles = role.to_pylist()
            role_tokens = np.fromiter(
                (0 if r is None else self._role_tokens(r) for r in roles), dtype=np.int64, count=len(roles)
            )
            content_valid = content.is_valid().to_numpy(zero_copy_only=False)
            content_tokens = np.zeros(len(content), dtype=np.int64)
            valid_texts = pc.filter(content, content.is_valid()).to_pylist()
            content_tokens[content_valid] = self.count_text(valid_texts)
        per_message = (self.per_message_overhead + role_tokens + content_tokens)[present]
        # bincount with weights returns float64; exact for totals < 2**53.
        total += np.bincount(owner[present], weights=per_message, minlength=n).astype(np.int64)
        is_assistant = pc.fill_null(pc.equal(role, "assistant"), False).to_numpy(zero_copy_only=False)
        mask = present & is_assistant & content.is_valid().to_numpy(zero_copy_only=False)
        if mask.any():
            assistant_tokens += np.bincount(owner[mask], weights=content_tokens[mask], minlength=n).astype(np.int64)
        return total, assistant_tokens

    def _flatten_message(self, msg: dict, texts: list[str], assistant_idx: list[int]) -> int:
        """General path for one message: append its texts, return its fixed extra tokens."""
        extra = 0
        assistant = msg.get("role") == "assistant"
        for key, value in msg.items():
            if value is None or key in _NON_TEXT_KEYS:
                continue
            if key == "role" and isinstance(value, str):
                extra += self._role_tokens(value)
                continue
            if not isinstance(value, str):
                value = json.dumps(value, ensure_ascii=False, default=_json_default)
            if key == "name":
                extra += _TOKENS_PER_NAME
            if assistant and key == "content":
                assistant_idx.append(len(texts))
            texts.append(value)
        return extra


def _json_default(value: Any) -> Any:
    """JSON fallback for values from pandas/pyarrow (numpy arrays and scalars)."""
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    return str(value)


# --------------------------------------------------------------------------- estimate

# Characters per chunk for the vectorised word count: small enough that the
# temporary arrays stay cache-friendly and memory-bounded, large enough that the
# per-chunk Python overhead is negligible.
_ESTIMATE_CHUNK_CHARS = 1 << 18


def _separator_counts(texts: Sequence[str], lengths: np.ndarray) -> np.ndarray:
    """Number of ``" "`` and ``"\\n"`` characters in each text, vectorised.

    Texts are joined per chunk with a newline, viewed as a numpy array of code
    units (1 byte per char when the chunk is ASCII, else UTF-32, so one unit is
    always one ``str`` character and offsets equal ``len()``), separator
    positions are found once, and each text's count is a pair of binary
    searches.  This is ~2-3x faster than ``str.count`` per text and avoids
    ``str.split``/regex allocations entirely.
    """
    n = len(texts)
    out = np.empty(n, dtype=np.int64)
    ends = np.cumsum(lengths + 1)  # end (exclusive) of each text + its joining newline
    i = 0
    while i < n:
        base = int(ends[i - 1]) if i else 0
        j = max(int(np.searchsorted(ends, base + _ESTIMATE_CHUNK_CHARS, side="right")), i + 1)
        joined = "\n".join(texts[i:j])
        if joined.isascii():
            units = np.frombuffer(joined.encode("ascii"), dtype=np.uint8)
        else:
            # surrogatepass: lone surrogates from badly decoded logs must not crash counting.
            units = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        sep_pos = np.flatnonzero((units == 32) | (units == 10))
        starts = ends[i:j] - 1 - lengths[i:j] - base
        out[i:j] = np.searchsorted(sep_pos, starts + lengths[i:j]) - np.searchsorted(sep_pos, starts)
        i = j
    return out


def _is_arrow_string(arrow_type: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)


def _arrow_estimates(strings: Any) -> np.ndarray:
    """:func:`estimate_token_counts` of an Arrow string array (0 for nulls), vectorized.

    Arrow strings are valid UTF-8, so ``utf8_length`` is Python's ``len``; spaces and newlines
    are single bytes in UTF-8, so they are counted on the raw data buffer."""
    import pyarrow.compute as pc

    lengths = pc.fill_null(pc.utf8_length(strings), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    words = _arrow_separator_counts(strings) + (lengths > 0)
    return np.maximum((lengths + 3) // 4, words)


def _arrow_separator_counts(strings: Any) -> np.ndarray:
    """Number of " " and "\\n" in each string of an Arrow string array (0 for nulls)."""
    import pyarrow as pa

    n = len(strings)
    out = np.zeros(n, dtype=np.int64)
    if n == 0:
        return out
    _, offsets_buffer, data_buffer = strings.buffers()
    offset_type = np.int64 if pa.types.is_large_string(strings.type) else np.int32
    offsets = np.frombuffer(offsets_buffer, dtype=offset_type)[strings.offset : strings.offset + n + 1].astype(np.int64)
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, dtype=np.uint8)
    i = 0
    while i < n:
        # Chunks of about _ESTIMATE_CHUNK_CHARS * 4 bytes bound the temporaries.
        j = max(int(np.searchsorted(offsets, offsets[i] + _ESTIMATE_CHUNK_CHARS * 4, side="right")) - 1, i + 1)
        lo, hi = int(offsets[i]), int(offsets[j])
        chunk = data[lo:hi]
        positions = np.flatnonzero((chunk == 32) | (chunk == 10))
        out[i:j] = np.searchsorted(positions, offsets[i + 1 : j + 1] - lo) - np.searchsorted(
            positions, offsets[i:j] - lo
        )
        i = j
    if strings.null_count:
        out[~strings.is_valid().to_numpy(zero_copy_only=False)] = 0
    return out


def estimate_token_counts(texts: Sequence[str]) -> np.ndarray:
    """Heuristic token counts: ``max(ceil(chars / 4), words)`` per text.

    ``chars / 4`` is OpenAI's published rule of thumb for English.  The word
    term keeps texts made of many very short words ("a b c 1 2 3") from being
    undercounted, since real tokenizers spend at least ~one token per word.
    Words are counted as ``spaces + newlines + 1`` (0 for an empty text), so
    repeated separators count as extra words -- an acceptable overestimate for
    a heuristic that must run over millions of messages (see
    :func:`_separator_counts`; no per-text regex or split).
    """
    if not isinstance(texts, (list, tuple)):
        texts = list(texts)  # chunking below slices; other sequences (e.g. Series) slice differently
    n = len(texts)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=n)
    by_chars = (lengths + 3) // 4  # integer ceil(len / 4)
    words = _separator_counts(texts, lengths) + (lengths > 0)
    return np.maximum(by_chars, words)


# --------------------------------------------------------------------------- hf


def _make_hf_counter(ref: str, per_message_overhead: int) -> TokenCounter:
    if not ref:
        raise ValueError("tokenizer 'hf:' needs a local path or cached hub id, e.g. 'hf:/models/my-model'")
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:  # pragma: no cover - transformers is a project dependency
        raise ValueError(
            f"tokenizer 'hf:{ref}' needs the 'transformers' package; use tokenizer='estimate' instead"
        ) from exc
    try:
        tok = AutoTokenizer.from_pretrained(ref, local_files_only=True)
    except Exception as exc:  # OSError/ValueError/... depending on what is missing
        where = (
            "directory exists but holds no loadable tokenizer"
            if os.path.isdir(ref)
            else ("is not a local directory and is not in the local Hugging Face cache")
        )
        raise ValueError(
            f"could not load tokenizer 'hf:{ref}': {ref!r} {where}. No download is attempted "
            f"(local_files_only=True); download the model beforehand or use tokenizer='estimate'. "
            f"Cause: {type(exc).__name__}: {exc}"
        ) from exc

    def count_batch(texts: Sequence[str]) -> np.ndarray:
        out = np.empty(len(texts), dtype=np.int64)
        for start in range(0, len(texts), _HF_BATCH_SIZE):
            batch = list(texts[start : start + _HF_BATCH_SIZE])
            # No special tokens: overhead is accounted separately; verbose=False
            # silences "sequence longer than model max length" noise for long chats.
            ids = tok(
                batch,
                add_special_tokens=False,
                return_attention_mask=False,
                return_token_type_ids=False,
                verbose=False,
            )["input_ids"]
            out[start : start + len(batch)] = np.fromiter(map(len, ids), dtype=np.int64, count=len(batch))
        return out

    return TokenCounter(f"hf:{ref}", count_batch, is_estimate=False, per_message_overhead=per_message_overhead)


# --------------------------------------------------------------------------- tiktoken

# Files each OpenAI encoding loads (tiktoken_ext/openai_public.py).  tiktoken
# caches a file under sha1(blob url); older releases used "az://openaipublic/..."
# urls, newer ones "https://openaipublic.blob.core.windows.net/...", so both are accepted.
_TIKTOKEN_FILES: dict[str, tuple[str, ...]] = {
    "gpt2": ("gpt-2/encodings/main/vocab.bpe", "gpt-2/encodings/main/encoder.json"),
    "r50k_base": ("encodings/r50k_base.tiktoken",),
    "p50k_base": ("encodings/p50k_base.tiktoken",),
    "p50k_edit": ("encodings/p50k_base.tiktoken",),
    "cl100k_base": ("encodings/cl100k_base.tiktoken",),
    "o200k_base": ("encodings/o200k_base.tiktoken",),
    "o200k_harmony": ("encodings/o200k_base.tiktoken",),
}
_TIKTOKEN_URL_PREFIXES = ("https://openaipublic.blob.core.windows.net/", "az://openaipublic/")

# Patching tiktoken.load.read_file is process-global; serialise loads.
_TIKTOKEN_LOCK = threading.Lock()


def tiktoken_cache_dir(tiktoken_load_module: Any = None) -> str:
    """The cache directory tiktoken would use, resolved like ``tiktoken.load.read_file_cached``.

    ``TIKTOKEN_CACHE_DIR``, else ``DATA_GYM_CACHE_DIR``, else the installed
    version's default (``<tmp>/data-gym-cache`` in released versions; newer
    sources define ``_default_cache_dir()``).  ``""`` means caching is disabled.
    """
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        return os.environ["TIKTOKEN_CACHE_DIR"]
    if "DATA_GYM_CACHE_DIR" in os.environ:
        return os.environ["DATA_GYM_CACHE_DIR"]
    default = getattr(tiktoken_load_module, "_default_cache_dir", None)
    if callable(default):
        return default()
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def _tiktoken_file_cached(cache_dir: str, rel_path: str) -> bool:
    return any(
        os.path.exists(os.path.join(cache_dir, hashlib.sha1((prefix + rel_path).encode()).hexdigest()))
        for prefix in _TIKTOKEN_URL_PREFIXES
    )


@contextlib.contextmanager
def _tiktoken_downloads_blocked(load_module: Any) -> Iterator[None]:
    """Make tiktoken's downloader raise instead of fetching (e.g. corrupt cache -> re-fetch)."""
    original = getattr(load_module, "read_file", None)
    if original is None:  # unknown tiktoken layout: rely on the cache check alone
        yield
        return

    def _offline_read_file(blobpath: str) -> bytes:
        if "://" in blobpath:
            raise RuntimeError(f"download of {blobpath} blocked (offline token counting)")
        return original(blobpath)

    with _TIKTOKEN_LOCK:
        load_module.read_file = _offline_read_file
        try:
            yield
        finally:
            load_module.read_file = original


def _make_tiktoken_counter(encoding_name: str, per_message_overhead: int) -> TokenCounter:
    advice = "use tokenizer='estimate' or 'hf:<local tokenizer dir>' instead"
    try:
        import tiktoken
        import tiktoken.load as tiktoken_load
    except ImportError as exc:
        raise ValueError(f"tokenizer 'tiktoken:{encoding_name}' needs the 'tiktoken' package; {advice}") from exc

    cache_dir = tiktoken_cache_dir(tiktoken_load)
    needed = _TIKTOKEN_FILES.get(encoding_name)
    if needed is not None:
        if cache_dir == "":
            raise ValueError(
                f"tokenizer 'tiktoken:{encoding_name}' needs the cached encoding file, but tiktoken "
                f"caching is disabled (TIKTOKEN_CACHE_DIR is empty) so it would download; {advice}"
            )
        missing = [p for p in needed if not _tiktoken_file_cached(cache_dir, p)]
        if missing:
            raise ValueError(
                f"tokenizer 'tiktoken:{encoding_name}' needs the encoding already cached locally "
                f"(tiktoken would download it on first use; no download is attempted). Not found in "
                f"cache dir {cache_dir!r}: {', '.join(missing)}. Populate the cache (set "
                f"TIKTOKEN_CACHE_DIR) on a machine with network access, or {advice}"
            )
    else:
        try:
            known = set(tiktoken.list_encoding_names())
        except Exception:  # pragma: no cover - very old tiktoken
            known = set()
        if known and encoding_name not in known:
            raise ValueError(
                f"unknown tiktoken encoding {encoding_name!r} (known: {', '.join(sorted(known))}); {advice}"
            )

    try:
        with _tiktoken_downloads_blocked(tiktoken_load):
            enc = tiktoken.get_encoding(encoding_name)
    except Exception as exc:
        raise ValueError(
            f"could not load tiktoken encoding {encoding_name!r} offline from cache dir {cache_dir!r} "
            f"(no download is attempted): {type(exc).__name__}: {exc}; {advice}"
        ) from exc

    def count_batch(texts: Sequence[str]) -> np.ndarray:
        # encode_ordinary: special-token strings inside logs are plain text,
        # where encode() would raise on e.g. "<|endoftext|>".
        ids = enc.encode_ordinary_batch(list(texts))
        return np.fromiter(map(len, ids), dtype=np.int64, count=len(texts))

    return TokenCounter(
        f"tiktoken:{encoding_name}", count_batch, is_estimate=False, per_message_overhead=per_message_overhead
    )


# --------------------------------------------------------------------------- public


def make_token_counter(config: TokenCounterConfig | None = None) -> TokenCounter:
    """Build the counter described by ``config`` (default: the chars/4 estimate).

    Raises:
        ValueError: unknown tokenizer spec, or a tokenizer that is not available
            offline (missing HF files, tiktoken not installed / not cached).
    """
    config = config or TokenCounterConfig()
    spec = config.tokenizer.strip()
    if spec == "estimate":
        return TokenCounter(
            "estimate:chars/4",
            estimate_token_counts,
            is_estimate=True,
            per_message_overhead=config.per_message_overhead,
        )
    if spec.startswith("hf:"):
        return _make_hf_counter(spec[len("hf:") :], config.per_message_overhead)
    if spec.startswith("tiktoken:"):
        return _make_tiktoken_counter(spec[len("tiktoken:") :], config.per_message_overhead)
    raise ValueError(
        f"unknown tokenizer {config.tokenizer!r}: expected 'estimate', 'hf:<local path or cached hub id>' "
        f"or 'tiktoken:<encoding name>'"
    )


def token_stats(counts: np.ndarray | Sequence[int]) -> dict[str, int | float]:
    """Summary of token counts: min, p10, p50, p90, max (ints/floats), mean, total.

    Percentiles use numpy's default linear interpolation.  Values are plain
    Python numbers (JSON / Dagster-metadata friendly).  An empty input gives zeros.
    """
    arr = np.asarray(counts, dtype=np.int64).ravel()
    if arr.size == 0:
        return {"min": 0, "p10": 0.0, "p50": 0.0, "p90": 0.0, "max": 0, "mean": 0.0, "total": 0}
    p10, p50, p90 = np.percentile(arr, [10, 50, 90])
    return {
        "min": int(arr.min()),
        "p10": float(p10),
        "p50": float(p50),
        "p90": float(p90),
        "max": int(arr.max()),
        "mean": float(arr.mean()),
        "total": int(arr.sum()),
    }
