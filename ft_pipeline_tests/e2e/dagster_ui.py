"""Helpers for the end-to-end test: a `dagster dev` subprocess on 127.0.0.1 and a tiny GraphQL client."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

LOCATION = "ft_pipeline"
REPOSITORY = "__repository__"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 1.0, what: str = "condition"):
    """Call ``predicate`` until it returns something truthy; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last value: {last!r})")


class DagsterDev:
    """``dagster dev`` in its own process group; ``stop()`` kills the whole group."""

    def __init__(self, repo_root: Path, env: dict[str, str], log_path: Path, port: int | None = None):
        self.repo_root = repo_root
        self.env = env
        self.log_path = log_path
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self, timeout: float = 120) -> None:
        dagster = Path(sys.executable).parent / "dagster"
        # Held open for the server's lifetime and closed in stop(), so no `with` block.
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(self.port)],
            cwd=self.repo_root,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"dagster dev exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/server_info", timeout=5) as r:
                    return r.status == 200
            except (urllib.error.URLError, ConnectionError, OSError):
                return False

        wait_until(ready, timeout, interval=1.0, what="dagster dev /server_info")

        # The code location must be loaded before anything can be launched.
        def location_loaded():
            data = self.gql(
                "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
                "locationOrLoadError { __typename ... on PythonError { message } } } } } }"
            )
            entries = data["workspaceOrError"]["locationEntries"]
            for entry in entries:
                if entry["name"] == LOCATION and entry["loadStatus"] == "LOADED":
                    if entry["locationOrLoadError"]["__typename"] == "PythonError":
                        raise RuntimeError(f"code location failed to load: {entry['locationOrLoadError']['message']}")
                    return True
            return False

        wait_until(location_loaded, timeout, interval=1.0, what="code location loaded")

    def stop(self, timeout: float = 20) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        # Children (run workers, training subprocesses) share the group: make sure none is left.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self._log:
            self._log.close()

    def log_tail(self, n: int = 8000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def gql(self, query: str, variables: dict | None = None, timeout: float = 60) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(
            f"{self.base_url}/graphql", data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=timeout) as r:
            payload = json.loads(r.read())
        if payload.get("errors"):
            raise AssertionError(f"GraphQL errors: {payload['errors']}")
        return payload["data"]
