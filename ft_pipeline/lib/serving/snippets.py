"""How to call a served model: the ``curl`` and ``openai`` client snippets that ``promoted_model``
shows (and the README repeats), for ``ft-pipeline serve`` on its default address."""

from __future__ import annotations

from ft_pipeline.lib.serving.config import ServeConfig

__all__ = ["DEFAULT_BASE_URL", "curl_snippet", "openai_snippet"]

_DEFAULTS = ServeConfig()
#: Where ``make serve`` / ``ft-pipeline serve`` answers by default.
DEFAULT_BASE_URL = f"http://{_DEFAULTS.host}:{_DEFAULTS.port}/v1"


def curl_snippet(model_name: str, base_url: str = DEFAULT_BASE_URL) -> str:
    """A Markdown shell block: one chat completion with curl."""
    return (
        "```sh\n"
        f"curl -s {base_url}/chat/completions -H 'Content-Type: application/json' \\\n"
        f'  -d \'{{"model": "{model_name}", "messages": [{{"role": "user", "content": "Hello"}}]}}\'\n'
        "```"
    )


def openai_snippet(model_name: str, base_url: str = DEFAULT_BASE_URL) -> str:
    """A Markdown Python block: one chat completion with the ``openai`` client."""
    return (
        "```python\n"
        "import openai\n\n"
        f'client = openai.OpenAI(base_url="{base_url}", api_key="none")\n'
        "answer = client.chat.completions.create(\n"
        f'    model="{model_name}", messages=[{{"role": "user", "content": "Hello"}}]\n'
        ")\n"
        "print(answer.choices[0].message.content)\n"
        "```"
    )
