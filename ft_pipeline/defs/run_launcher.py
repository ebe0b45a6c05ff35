"""Dagster's default run launcher plus a health check of the run worker process, for run monitoring.

With ``DefaultRunLauncher`` a run whose worker is SIGKILLed together with its code server (``dagster
dev`` killed, the OOM killer, a host restart) stays STARTED forever: the daemon's run monitoring only
asks a launcher about a STARTED run when the launcher can check worker health, and the default one
cannot. The code server would have noticed its dead child, but it died too. ``LocalProcessRunLauncher``
answers that question from the pid the run worker reports when it starts, so the monitoring daemon
marks such a run FAILURE within one ``poll_interval_seconds`` and ``run_retries`` re-launches it.

Selected in the repo's ``dagster.yaml``::

    run_launcher:
      module: ft_pipeline.defs.run_launcher
      class: LocalProcessRunLauncher

It is for single-host deployments (``dagster dev``, ``make dev``): the daemon must see the run
workers' pids, i.e. run on the same host and in the same PID namespace as the code servers it
launches runs on. Kubernetes uses ``K8sRunLauncher`` (deploy/dagster.yaml), which has its own check.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import psutil
from dagster._core.events import DagsterEventType
from dagster._core.launcher import CheckRunHealthResult, DefaultRunLauncher, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.tags import GRPC_INFO_TAG

# The engine event the run worker writes once it runs, with its pid in the metadata
# (dagster/_grpc/impl.py: EngineEventData.in_process(pid)). test_run_monitoring.py runs a real worker,
# so a change of this text in Dagster fails that test instead of silently disabling the check.
STARTED_PROCESS_MESSAGE = "Started process for run"

# psutil derives a process's start time from the boot time, which Linux reports in whole seconds, and
# the event's timestamp comes from the worker's clock a moment after it started. A process that
# "started" less than this after the event is the worker itself, not a newcomer that reused its pid.
PID_REUSE_SLACK_S = 2.0


class LocalProcessRunLauncher(DefaultRunLauncher):
    """``DefaultRunLauncher`` (runs start on the code location's gRPC server) that also tells run
    monitoring whether a run's worker process is still alive.

    FAILED when the pid from the worker's "Started process for run" event no longer exists, is a
    zombie, or now belongs to a process created after that event (pid reuse). RUNNING whenever it
    cannot tell (no pid reported yet, or a code server on another host): run monitoring fails a run on
    anything but RUNNING/SUCCESS, so uncertainty must never read as a dead worker. Those runs still end
    through ``max_runtime_seconds``. No config of its own: ``config_type``/``from_config_value`` are
    ``DefaultRunLauncher``'s (an empty schema).
    """

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        reported = self._reported_worker(run)
        if reported is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, "the run worker has not reported its pid yet")
        pid, reported_at = reported
        where = _code_server_address(run)
        if where is None:
            return CheckRunHealthResult(
                WorkerStatus.RUNNING,
                "the run's code server is not on this host; its worker cannot be checked from here",
                run_worker_id=str(pid),
            )
        reason = worker_gone_reason(pid, reported_at)
        if reason is not None:
            return CheckRunHealthResult(
                WorkerStatus.FAILED,
                f"run worker process {pid} is gone (killed or crashed): {reason}; code server {where}",
                run_worker_id=str(pid),
            )
        return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=str(pid))

    def _reported_worker(self, run: DagsterRun) -> tuple[int, float] | None:
        """(pid, event timestamp) of the newest worker start of ``run``, or None if none was reported."""
        entries = self._instance.event_log_storage.get_logs_for_run(
            run.run_id, of_type=DagsterEventType.ENGINE_EVENT, ascending=False
        )
        for entry in entries:
            event = entry.dagster_event
            if event is None or not (event.message or "").startswith(STARTED_PROCESS_MESSAGE):
                continue
            # A MetadataValue (its .value is the pid) or, in events written by older code, the raw value.
            pid_value: Any = event.engine_event_data.metadata.get("pid")
            try:
                return int(getattr(pid_value, "value", pid_value)), entry.timestamp
            except (TypeError, ValueError):
                continue
        return None


def worker_gone_reason(pid: int, reported_at: float) -> str | None:
    """Why the process that reported ``pid`` at ``reported_at`` (epoch seconds) is no longer running,
    or None if it still is (or this process may not look at it, which is not evidence of death)."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            # Exited, not yet reaped by its parent (or by init after the code server died too).
            return "the process has exited (zombie)"
        if process.create_time() > reported_at + PID_REUSE_SLACK_S:
            return (
                f"pid {pid} now belongs to another process ({process.name()!r}), started after the worker reported it"
            )
    except psutil.NoSuchProcess:
        return "no such process"
    except psutil.AccessDenied:
        return None
    return None


def _code_server_address(run: DagsterRun) -> str | None:
    """The code server's address from the run's gRPC tag when that server runs on this host (a unix
    socket or a loopback address), else None. The run worker is that server's child process, so only
    then is its pid one this host can look up."""
    raw = run.tags.get(GRPC_INFO_TAG)
    if not raw:
        return None
    try:
        info = json.loads(raw)
    except ValueError:
        return None
    if info.get("socket"):
        return f"unix:{info['socket']}"
    host = str(info.get("host") or "")
    if host == "localhost":
        return f"{host}:{info.get('port')}"
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    return f"{host}:{info.get('port')}" if loopback else None
