"""``ft-pipeline serve``: an OpenAI-compatible server for the model behind the registry's aliases.

What the promotion gate promotes is what answers, and what answers is what was evaluated: local
versions answer through the evaluation's own ``LocalGenerator`` with the generation settings the
version's evaluation recorded; hosted (``openai`` backend) versions are proxied to the provider.
Pure Python (no dagster): :mod:`.config` (settings), :mod:`.models` (names, loaded versions, hot
swap), :mod:`.app` (the FastAPI app), :mod:`.server` (uvicorn).
"""

from ft_pipeline.lib.serving.config import DEFAULT_ASSIGNMENT_LOG, ServeConfig

__all__ = ["DEFAULT_ASSIGNMENT_LOG", "ServeConfig"]
