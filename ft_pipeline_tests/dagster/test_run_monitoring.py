"""Finding: runs killed with SIGKILL stay STARTED forever (run monitoring should mark them failed).

A real code server and run worker, launched by the run launcher and run monitoring settings of the
repo's dagster.yaml, and Dagster's own monitoring pass (what the daemon runs every
``poll_interval_seconds``). The stuck case is a worker killed together with its code server (``dagster
dev`` SIGKILLed, the OOM killer, a host restart): a code server that survives notices its dead child
by itself, so the tests kill the server first.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import dagster as dg
import psutil
import pytest
import yaml
from dagster._core.events import DagsterEvent, DagsterEventType, EngineEventData
from dagster._core.events.log import EventLogEntry
from dagster._core.launcher import WorkerStatus
from dagster._core.storage.dagster_run import DagsterRunStatus
from dagster._core.storage.tags import GRPC_INFO_TAG
from dagster._core.test_utils import create_run_for_test, create_test_daemon_workspace_context
from dagster._core.workspace.load_target import PythonFileTarget
from dagster._daemon.auto_run_reexecution.auto_run_reexecution import should_retry
from dagster._daemon.monitoring.run_monitoring import execute_run_monitoring_iteration

from ft_pipeline.defs.run_launcher import STARTED_PROCESS_MESSAGE, LocalProcessRunLauncher

REPO = Path(__file__).resolve().parents[2]
CODE_LOCATION = Path(__file__).with_name("sleepy_code_location.py")
LOGGER = logging.getLogger(__name__)


def _shipped_settings() -> dict:
    """The launcher, monitoring and retry settings exactly as the repo's dagster.yaml ships them."""
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    return {key: config[key] for key in ("run_launcher", "run_monitoring", "run_retries")}


def _worker_pid(instance, run_id: str) -> int | None:
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        if entry.dagster_event.message.startswith(STARTED_PROCESS_MESSAGE):
            return int(entry.dagster_event.engine_event_data.metadata["pid"].value)
    return None


def _monitor(context) -> None:
    """One pass of the monitoring daemon over every in-progress run."""
    errors = [e for e in execute_run_monitoring_iteration(context, LOGGER) if e is not None]
    assert not errors, errors


def _wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@contextmanager
def _started_run(tmp_path):
    """A STARTED run of ``busy_job`` on a real code server, launched through the shipped launcher.
    Yields (instance, workspace process context, run id, worker pid, code server process); on exit
    SIGKILLs whatever of the worker and the server is still there."""
    pids, run = [], None
    with dg.instance_for_test(overrides=_shipped_settings(), temp_dir=str(tmp_path)) as instance:
        assert type(instance.run_launcher) is LocalProcessRunLauncher
        target = PythonFileTarget(
            python_file=str(CODE_LOCATION),
            attribute=None,
            working_directory=str(CODE_LOCATION.parent),
            location_name="busy",
        )
        with create_test_daemon_workspace_context(target, instance) as context:
            try:
                workspace = context.create_request_context()
                location = workspace.get_code_location("busy")
                (repository,) = location.get_repositories().values()
                job = repository.get_full_job("busy_job")
                run = create_run_for_test(
                    instance,
                    job_name="busy_job",
                    remote_job_origin=job.get_remote_origin(),
                    job_code_origin=job.get_python_origin(),
                )
                instance.launch_run(run.run_id, workspace)

                def started():
                    current = instance.get_run_by_id(run.run_id)
                    assert not current.is_finished, f"run ended early: {current.status}"
                    return current.status == DagsterRunStatus.STARTED and _worker_pid(instance, run.run_id)

                pid = _wait_until(started, 90, "the run worker to start")
                pids.append(pid)
                server = psutil.Process(pid).parent()
                # The worker's parent is the code server this test started, nothing else.
                assert server.ppid() == os.getpid()
                pids.insert(0, server.pid)
                yield instance, context, run.run_id, pid, server
            finally:
                for leftover in pids:  # server first: it must not outlive its test
                    try:
                        os.kill(leftover, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                # The launcher waits for its runs to end when the instance closes; this one never will.
                current = run and instance.get_run_by_id(run.run_id)
                if current and not current.is_finished:
                    instance.report_run_canceled(current, "ended by the test")


@pytest.mark.slow  # a real code server and run worker, killed and waited for (about 5 s)
def test_runs_killed_with_sigkill_stay_started_forever(tmp_path):
    with _started_run(tmp_path) as (instance, context, run_id, pid, server):
        server.send_signal(signal.SIGKILL)
        _wait_until(lambda: _gone(server.pid), 10, "the code server to die")
        os.kill(pid, signal.SIGKILL)
        _wait_until(lambda: _gone(pid), 10, "the run worker to die")
        time.sleep(1)  # longer than a code server's own orphan check (0.5 s): nobody else fails the run
        assert instance.get_run_by_id(run_id).status == DagsterRunStatus.STARTED

        # The finding: a launcher that cannot check worker health (Dagster's default) leaves it so.
        with mock.patch.object(LocalProcessRunLauncher, "supports_check_run_worker_health", False):
            _monitor(context)
        assert instance.get_run_by_id(run_id).status == DagsterRunStatus.STARTED

        # The shipped launcher: failed on the first monitoring pass, i.e. within poll_interval_seconds.
        _monitor(context)
        run = instance.get_run_by_id(run_id)
        assert run.status == DagsterRunStatus.FAILURE
        (failure,) = instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE)
        assert f"run worker process {pid} is gone (killed or crashed)" in failure.dagster_event.message
        # ... and it is the kind of failure run_retries re-launches (not an asset or op failure).
        assert should_retry(run, instance)


def test_healthy_run_is_not_failed_by_monitoring(tmp_path):
    with _started_run(tmp_path) as (instance, context, run_id, pid, _server):
        health = instance.run_launcher.check_run_worker_health(instance.get_run_by_id(run_id))
        assert (health.status, health.run_worker_id) == (WorkerStatus.RUNNING, str(pid))
        _monitor(context)
        assert instance.get_run_by_id(run_id).status == DagsterRunStatus.STARTED
        assert not instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE)


def _report_worker(instance, run, pid: int, at: float) -> None:
    """The run worker's start event, as Dagster writes it, with the pid ``pid`` at time ``at``."""
    message = f"{STARTED_PROCESS_MESSAGE} (pid: {pid})."
    event = DagsterEvent(
        event_type_value=DagsterEventType.ENGINE_EVENT.value,
        job_name=run.job_name,
        message=message,
        event_specific_data=EngineEventData.in_process(pid),
    )
    instance.store_event(
        EventLogEntry(
            error_info=None,
            level=logging.DEBUG,
            user_message=message,
            run_id=run.run_id,
            timestamp=at,
            dagster_event=event,
        )
    )


def test_worker_health_pid_reuse_and_what_it_cannot_tell(tmp_path):
    """Without real runs: a pid taken over by a newer process is a dead worker; anything the launcher
    cannot check (no pid yet, a code server on another host) is RUNNING, never a failure."""
    with dg.instance_for_test(overrides=_shipped_settings(), temp_dir=str(tmp_path)) as instance:
        launcher = instance.run_launcher

        def health(grpc_info: dict, reports=()):
            run = create_run_for_test(instance, job_name="busy_job", tags={GRPC_INFO_TAG: json.dumps(grpc_info)})
            for pid, at in reports:
                _report_worker(instance, run, pid, at)
            return launcher.check_run_worker_health(run)

        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
            try:
                now = time.time()
                local = {"host": "localhost", "port": 4000}
                assert health(local).status == WorkerStatus.RUNNING
                assert health(local, [(other.pid, now)]).status == WorkerStatus.RUNNING
                reused = health(local, [(other.pid, now - 3600)])
                assert reused.status == WorkerStatus.FAILED and "now belongs to another process" in reused.msg
                # The newest start event counts (a run worker that was started again).
                assert health(local, [(other.pid, now - 3600), (other.pid, now)]).status == WorkerStatus.RUNNING

                gone = health({"host": "127.0.0.1", "socket": "/tmp/code.sock"}, [(dead.pid, now)])
                assert gone.status == WorkerStatus.FAILED and f"run worker process {dead.pid} is gone" in gone.msg
                remote = health({"host": "code-server.internal", "port": 4000}, [(dead.pid, now)])
                assert remote.status == WorkerStatus.RUNNING and "not on this host" in remote.msg
            finally:
                other.kill()
