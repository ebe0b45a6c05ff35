"""Running the server: :func:`build_server` (pool + app), :func:`serve` (uvicorn in the foreground,
what ``ft-pipeline serve`` runs) and :class:`ServerThread` (uvicorn in a thread on a free loopback
port, for tests and ``benchmarks/bench_serve.py``)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ft_pipeline.lib.registry import ModelRegistry, ModelVersion
from ft_pipeline.lib.serving.app import AssignmentLog, ServingMetrics, create_app
from ft_pipeline.lib.serving.config import ServeConfig
from ft_pipeline.lib.serving.models import ModelPool, ServedModel, load_served_model

__all__ = ["ServerThread", "ServingServer", "build_server", "serve"]


@dataclass
class ServingServer:
    """A started model pool and the app over it."""

    pool: ModelPool
    app: Any
    metrics: ServingMetrics

    def stop(self) -> None:
        self.pool.stop()


def build_server(
    registry: ModelRegistry,
    config: ServeConfig,
    *,
    data_dir: Path,
    loader: Callable[[ModelVersion], ServedModel] | None = None,
    on_swap: Callable[[str, ModelVersion | None], None] | None = None,
) -> ServingServer:
    """Load the served aliases (production, and the challenger with A/B on), start the alias
    poller and build the app. ``loader`` defaults to :func:`load_served_model`."""
    load = loader or (lambda version: load_served_model(registry, version, data_dir=data_dir, config=config))
    pool = ModelPool(registry, config, load, on_swap=on_swap)
    pool.start()
    metrics = ServingMetrics()
    app = create_app(pool, config, metrics=metrics, assignments=AssignmentLog(config.assignment_log))
    return ServingServer(pool, app, metrics)


def serve(server: ServingServer, config: ServeConfig) -> None:
    """uvicorn in the foreground until Ctrl-C; the pool's poller stops with it."""
    import uvicorn

    try:
        uvicorn.run(server.app, host=config.host, port=config.port, log_level="info", access_log=False)
    finally:
        server.stop()


class ServerThread:
    """uvicorn serving ``app`` in a daemon thread; ``with ServerThread(app) as s: s.base_url``.

    Port 0 picks a free port (the bound socket is handed to uvicorn, so there is no race)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *, start_timeout_s: float = 30.0) -> None:
        import uvicorn

        self.app = app
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host, self.port = self._socket.getsockname()[:2]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._socket]}, name="ft-serve", daemon=True
        )
        self.start_timeout_s = start_timeout_s

    @property
    def base_url(self) -> str:
        """``http://host:port/v1``, for ``openai.OpenAI(base_url=...)``."""
        return f"{self.url}/v1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=15)
        self._socket.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
