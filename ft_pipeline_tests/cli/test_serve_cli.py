"""`ft-pipeline serve` as a command: a real server process over a data directory's registry,
answering the real `openai` client (plain and streaming), counted in /metrics, and switching the
answering version when `ft-pipeline registry rollback` runs in another process; plus its errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

from ft_pipeline.cli import main
from ft_pipeline.lib.registry import ModelRegistry
from ft_pipeline_tests.unit.test_serving import NAME, PROMPTS, _quiet, _register, tiny  # noqa: F401 - fixtures


def test_vllm_engine_needs_a_registry_and_never_starts_vllm_without_it(tmp_path, capsys, monkeypatch):
    # The command and manifest themselves: ft_pipeline_tests/unit/test_vllm_command.py.
    (tmp_path / "empty").mkdir()
    assert main(["serve", "--engine", "vllm", "--data-dir", str(tmp_path / "empty")]) == 2
    assert "no registry at" in capsys.readouterr().err
    ModelRegistry.for_data_dir(tmp_path).close()
    assert main(["serve", "--engine", "vllm", "--print-command", "--data-dir", str(tmp_path)]) == 1
    assert "has no production version" in capsys.readouterr().err
    monkeypatch.setattr("ft_pipeline.lib.vllm_command.plan_vllm", lambda *a, **k: None)
    monkeypatch.setattr("ft_pipeline.lib.vllm_command.vllm_available", lambda: False)
    assert main(["serve", "--engine", "vllm", "--data-dir", str(tmp_path)]) == 2
    assert "vllm is not installed here" in capsys.readouterr().err


def test_serve_without_a_registry_is_an_error_not_a_new_registry(tmp_path, capsys):
    assert main(["serve", "--data-dir", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "missing").exists()
    (tmp_path / "empty").mkdir()
    assert main(["serve", "--data-dir", str(tmp_path / "empty")]) == 2
    assert "no registry at" in capsys.readouterr().err
    assert not (tmp_path / "empty" / "registry.db").exists()


def test_serve_rejects_bad_settings(tmp_path, capsys):
    ModelRegistry.for_data_dir(tmp_path).close()
    assert main(["serve", "--data-dir", str(tmp_path), "--challenger-share", "1.5"]) == 2
    assert "challenger_share" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until(check, bound_s=60.0):
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def test_serve_answers_streams_counts_and_follows_a_rollback_from_another_process(tiny, tmp_path):  # noqa: F811
    data_dir, base, (adapter1, adapter2) = tiny
    registry = ModelRegistry.for_data_dir(data_dir)
    v1, e1, answers1 = _register(registry, data_dir, base, adapter1, 41)
    v2, e2, answers2 = _register(registry, data_dir, base, adapter2, 42, baseline_uri=v1.model_uri)
    registry.promote(NAME, v1.version, evaluation_id=e1, reason="first", actor="test")
    registry.promote(NAME, v2.version, evaluation_id=e2, reason="better", actor="test")
    registry.close()
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "ft_pipeline.cli", "serve", "--data-dir", str(data_dir), "--model", NAME]
    command += ["--port", str(port), "--poll-interval", "0.2"]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        assert _wait_until(lambda: http.get("/health").status_code == 200), "the server did not start"
        assert http.get("/health").json()["version"] == v2.version
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        response = client.chat.completions.create(model=NAME, messages=PROMPTS[0])
        assert (response.model, response.choices[0].message.content) == (f"{NAME}:v{v2.version}", answers2[0])
        streamed = "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(model=NAME, messages=PROMPTS[0], stream=True)
            if c.choices
        )
        assert streamed == answers2[0]
        metrics = http.get("/metrics").text
        assert f'ft_serve_requests_total{{alias="production",model="{NAME}",version="{v2.version}"}} 2.0' in metrics

        # "In another shell": the registry command rolls production back; the server follows.
        assert main(["registry", "--data-dir", str(data_dir), "rollback", NAME, "--reason", "complaints"]) == 0
        assert _wait_until(lambda: http.get("/health").json()["version"] == v1.version, 30)
        response = client.chat.completions.create(model=NAME, messages=PROMPTS[0])
        assert (response.model, response.choices[0].message.content) == (f"{NAME}:v{v1.version}", answers1[0])
    finally:
        server.send_signal(signal.SIGINT)
        try:
            output, _ = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            output, _ = server.communicate()
    assert f"serving {NAME} v{v2.version} (production)" in output
    assert f"{NAME}@production now serves v{v1.version}" in output
    assert "Traceback" not in output, output


@pytest.mark.parametrize("argv", [["serve", "--port", "99999"], ["serve", "--poll-interval", "0"]])
def test_serve_setting_errors_are_one_line(argv, tmp_path, capsys):
    ModelRegistry.for_data_dir(tmp_path).close()
    assert main([*argv, "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
