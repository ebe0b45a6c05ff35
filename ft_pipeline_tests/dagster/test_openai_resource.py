"""The OpenAI resource names the variable that holds the key; the key never enters run config."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from ft_pipeline.defs.resources import OpenAIFineTuningResource

KEY = "sk-test-never-in-config-0123456789"


def test_the_key_is_read_from_the_named_variable(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    client = OpenAIFineTuningResource(base_url="http://127.0.0.1:9/v1").get_client()
    assert client.api_key == KEY
    monkeypatch.setenv("TEAM_OPENAI_KEY", KEY + "-team")
    assert OpenAIFineTuningResource(api_key_env="TEAM_OPENAI_KEY").get_client().api_key == KEY + "-team"


def test_a_missing_key_fails_with_the_variable_name(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(dg.Failure, match="OPENAI_API_KEY is not set"):
        OpenAIFineTuningResource().get_client()


def test_the_definitions_and_their_run_config_never_hold_the_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    from ft_pipeline.definitions import default_resources

    resource = default_resources()["openai_fine_tuning"]
    assert isinstance(resource, OpenAIFineTuningResource)
    config = resource.model_dump()
    assert config["api_key_env"] == "OPENAI_API_KEY"
    assert KEY not in json.dumps(config)
