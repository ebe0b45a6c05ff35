"""How to call the served model: the curl and openai snippets run as written against a real
`ft-pipeline serve` (a scripted hosted model behind the fake provider keeps it fast), and
promoted_model's metadata shows them inline (Markdown under the UI's 1000-character limit)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess

import dagster as dg
import pytest

from ft_pipeline.defs.evaluation import promoted_model
from ft_pipeline.defs.metadata import INLINE_MARKDOWN_LIMIT
from ft_pipeline.lib.evaluation.summary import EvaluationSummary, write_evaluation_summary
from ft_pipeline.lib.registry import ModelRegistry
from ft_pipeline.lib.serving import ServeConfig
from ft_pipeline.lib.serving.server import ServerThread, build_server
from ft_pipeline.lib.serving.snippets import DEFAULT_BASE_URL, curl_snippet, openai_snippet
from ft_pipeline_tests.conftest import register_evaluated_version, resources_for
from ft_pipeline_tests.fakes.openai_server import FakeOpenAI
from ft_pipeline_tests.unit.test_serving import _register

NAME = "ft-pipeline-assistant"
REMOTE = "ft:gpt-4o-mini-2024-07-18:org::snippet"


def _code(markdown: str) -> str:
    """The code inside a fenced Markdown block."""
    lines = markdown.strip().splitlines()
    assert lines[0].startswith("```") and lines[-1] == "```"
    return "\n".join(lines[1:-1])


@pytest.fixture
def server(tmp_path, monkeypatch):
    with FakeOpenAI() as fake:
        fake.register_model(REMOTE)
        fake.set_responder(REMOTE, lambda messages, body: f"served: {messages[-1]['content']}")
        monkeypatch.setenv("SNIPPET_KEY", "sk-test-snippet-1234")
        registry = ModelRegistry.for_data_dir(tmp_path)
        _, eval_id, _ = _register(registry, tmp_path, None, None, 1, backend="openai", remote=REMOTE, name=NAME)
        registry.promote(NAME, 1, evaluation_id=eval_id, reason="first", actor="test")
        config = ServeConfig(openai_api_key_env="SNIPPET_KEY", openai_base_url=fake.base_url, poll_interval_s=10)
        built = build_server(registry, config, data_dir=tmp_path)
        try:
            with ServerThread(built.app) as thread:
                yield thread
        finally:
            built.stop()


def test_the_openai_snippet_runs_as_written(server):
    code = _code(openai_snippet(NAME, server.base_url))
    assert DEFAULT_BASE_URL not in code and server.base_url in code
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "snippet", "exec"), {})
    assert out.getvalue() == "served: Hello\n"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_curl_snippet_runs_as_written(server):
    code = _code(curl_snippet(NAME, server.base_url))
    result = subprocess.run(["sh", "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(result.stdout)["choices"][0]["message"]["content"] == "served: Hello"


def test_snippets_default_to_make_serves_address():
    assert DEFAULT_BASE_URL == "http://127.0.0.1:8000/v1"
    assert f'base_url="{DEFAULT_BASE_URL}"' in openai_snippet(NAME)
    assert f"{DEFAULT_BASE_URL}/chat/completions" in curl_snippet(NAME)


def test_promoted_model_metadata_says_how_to_call_it(data_dir, instance):
    registry = ModelRegistry.for_data_dir(data_dir)
    version = register_evaluated_version(
        registry, NAME, model_uri=REMOTE, backend="openai", base_model="b", eval_id="e1"
    )
    write_evaluation_summary(
        data_dir / "reports",
        EvaluationSummary(
            version="e1",
            path="report.json",
            model_name=NAME,
            candidate_version=version.version,
            candidate_uri=version.model_uri,
            production_version=None,
            production_uri=None,
            already_production=False,
            passed=True,
            rules=[{"rule": "primary", "passed": True, "detail": "better"}],
        ),
    )
    result = dg.materialize([promoted_model], resources=resources_for(data_dir), instance=instance)
    metadata = result.asset_materializations_for_node("promoted_model")[0].metadata
    assert metadata["call_with_curl"].value == curl_snippet(NAME)
    assert metadata["call_with_openai"].value == openai_snippet(NAME)
    for key in ("call_with_curl", "call_with_openai"):
        assert isinstance(metadata[key], dg.MarkdownMetadataValue)
        assert len(metadata[key].value) < INLINE_MARKDOWN_LIMIT
