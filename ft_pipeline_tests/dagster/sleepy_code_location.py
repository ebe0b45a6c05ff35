"""A code location for test_run_monitoring.py: one job whose only asset keeps its run worker busy.

It runs in a real code server started by the test, so it is loaded by file path, not imported. The
in-process executor keeps the asset inside the run worker: killing that one process kills the run,
with no step subprocess left behind.
"""

import time

import dagster as dg

BUSY_FOR_S = 120


@dg.asset
def busy() -> None:
    """Sleeps in short slices so a cancel or interrupt stops it promptly."""
    deadline = time.monotonic() + BUSY_FOR_S
    while time.monotonic() < deadline:
        time.sleep(0.2)


busy_job = dg.define_asset_job("busy_job", selection=[busy], executor_def=dg.in_process_executor)

defs = dg.Definitions(assets=[busy], jobs=[busy_job])
