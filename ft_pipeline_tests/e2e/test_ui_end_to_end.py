"""End to end through the real UI server: `dagster dev` on 127.0.0.1, driven through its GraphQL API
(partitions, ingest runs, training run, sensor, schedule), then screenshots in a headless Chromium."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
from pathlib import Path

import pytest

from ft_pipeline_tests.e2e.dagster_ui import LOCATION, REPOSITORY, DagsterDev, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

REPO_SELECTOR = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY}
TRAIN_RUN_CONFIG = {
    "ops": {
        "fine_tuned_model": {
            "config": {
                "base_model": "tiny",
                "learning_rate": 0.004,
                "max_length": 512,
                "per_device_train_batch_size": 8,
                "num_train_epochs": 3.0,
            }
        },
        "evaluation_report": {"config": {"max_new_tokens": 32, "n_resamples": 500, "robustness_examples": 4}},
    }
}
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}
NEW_FILE = "late_arrival_2024-05-04.jsonl"

ADD_PARTITION = """
mutation($repo: RepositorySelector!, $key: String!) {
  addDynamicPartition(repositorySelector: $repo, partitionsDefName: "log_files", partitionKey: $key) {
    __typename
    ... on AddDynamicPartitionSuccess { partitionKey }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
}"""
LAUNCH_RUN = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message stack }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
  }
}"""
RUNS = """
query($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs { results { runId status jobName tags { key value } } }
    ... on PythonError { message }
  }
}"""
RUN_STEPS = """
query($runId: ID!) {
  runOrError(runId: $runId) {
    ... on Run {
      status
      stepStats { stepKey status }
      assetMaterializations { assetKey { path } }
      assetCheckEvaluations: eventConnection(afterCursor: null) {
        events {
          __typename
          ... on AssetCheckEvaluationEvent { evaluation { checkName success description } }
          ... on ExecutionStepFailureEvent { stepKey error { message } }
        }
      }
    }
  }
}"""
LATEST_VERSION = """
query($path: [String!]!) {
  assetOrError(assetKey: {path: $path}) {
    ... on Asset {
      assetMaterializations(limit: 1) {
        tags { key value }
        metadataEntries {
          label
          ... on PathMetadataEntry { path }
          ... on TextMetadataEntry { text }
        }
      }
    }
  }
}"""
LAST_MATERIALIZATION = """
query($path: [String!]!) {
  assetOrError(assetKey: {path: $path}) {
    __typename
    ... on Asset { assetMaterializations(limit: 1) { runId timestamp } }
  }
}"""
START_SENSOR = """
mutation($sel: SensorSelector!) {
  startSensor(sensorSelector: $sel) {
    __typename
    ... on Sensor { sensorState { status } minIntervalSeconds }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
}"""
SENSOR_TICKS = """
query($sel: SensorSelector!) {
  sensorOrError(sensorSelector: $sel) {
    ... on Sensor { sensorState { status ticks(limit: 10) { status timestamp skipReason runIds error { message } } } }
  }
}"""
START_SCHEDULE = """
mutation($sel: ScheduleSelector!) {
  startSchedule(scheduleSelector: $sel) {
    __typename
    ... on ScheduleStateResult { scheduleState { status } }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
}"""
SCHEDULE = """
query($sel: ScheduleSelector!) {
  scheduleOrError(scheduleSelector: $sel) {
    __typename
    ... on Schedule {
      cronSchedule executionTimezone
      scheduleState { status }
      futureTicks(limit: 2) { results { timestamp } }
    }
  }
}"""


def _runs(server: DagsterDev, **filter_) -> list[dict]:
    data = server.gql(RUNS, {"filter": filter_})["runsOrError"]
    assert data["__typename"] == "Runs", data
    return data["results"]


def _launch(server: DagsterDev, job: str, run_config: dict | None = None, tags: dict | None = None) -> str:
    params = {
        "selector": {**REPO_SELECTOR, "jobName": job},
        "runConfigData": run_config or {},
        "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]},
    }
    result = server.gql(LAUNCH_RUN, {"params": params})["launchRun"]
    assert result["__typename"] == "LaunchRunSuccess", result
    return result["run"]["runId"]


def _wait_runs(server: DagsterDev, run_ids: list[str], timeout: float) -> dict[str, str]:
    def done():
        statuses = {r["runId"]: r["status"] for r in _runs(server, runIds=run_ids)}
        return statuses if len(statuses) == len(run_ids) and set(statuses.values()) <= TERMINAL else None

    try:
        return wait_until(done, timeout, interval=2.0, what=f"runs {run_ids} to finish")
    except TimeoutError:
        print(server.log_tail())
        raise


def _run_details(server: DagsterDev, run_id: str) -> dict:
    return server.gql(RUN_STEPS, {"runId": run_id})["runOrError"]


@pytest.fixture
def dagster_dev(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    data = tmp_path / "data"
    from ft_pipeline.lib.sample_data import write_sample

    write_sample(data / "raw")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "FT_PIPELINE_DATA_DIR": str(data),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "DAGSTER_DISABLE_TELEMETRY": "1",
        "PYTHONUNBUFFERED": "1",
    }
    for key in (
        "FT_PIPELINE_LANDING_DIR",
        "FT_PIPELINE_REGISTRY_URL",
        "OPENAI_API_KEY",
        "FT_PIPELINE_FAILURE_WEBHOOK",
        "FT_PIPELINE_RETRAIN_CRON",
        "FT_PIPELINE_RETRAIN_TIMEZONE",
    ):
        env.pop(key, None)
    server = DagsterDev(REPO_ROOT, env, tmp_path / "dagster_dev.log")
    server.data_dir = data
    try:
        server.start(timeout=150)
        yield server
    finally:
        server.stop()


def _dismiss_community_dialog(page) -> None:
    """A fresh browser profile gets Dagster's "Join the Dagster community" modal; skip it."""
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.first.wait_for(state="visible", timeout=3_000)
    except Exception:
        return
    skip.first.click()
    skip.first.wait_for(state="hidden", timeout=10_000)


class BrowserUnavailable(Exception):
    """No Chromium or no playwright: the browser part is skipped (with this reason), nothing else."""


def _check_evaluation_report_page(page) -> None:
    """The results are on the page without a click: the decision, the inline chart (an SVG data
    URI image) and the table of test prompts with the reference and both models' answers."""
    page.get_by_text("decision", exact=True).first.wait_for(state="visible", timeout=30_000)
    chart = page.locator("img[src^='data:image/svg+xml']").first
    chart.wait_for(state="visible", timeout=30_000)
    assert chart.bounding_box()["width"] > 100, chart.bounding_box()
    for header in ("example", "part", "text"):
        page.get_by_role("columnheader", name=header, exact=True).first.wait_for(state="visible", timeout=30_000)
    for part in ("prompt", "reference", "candidate", "base"):
        page.get_by_role("cell", name=part, exact=True).first.wait_for(state="visible", timeout=30_000)


def _check_job_page(page, run_id: str) -> None:
    """train_model's runs page lists the training run (the UI filters job runs by repository tag)."""
    page.get_by_text(run_id[:8]).first.wait_for(state="visible", timeout=30_000)


def _screenshots(server: DagsterDev, train_run_id: str) -> list[Path]:
    if not CHROMIUM.exists():
        raise BrowserUnavailable(f"{CHROMIUM} not found (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - dev extra not installed
        raise BrowserUnavailable(f"playwright does not import ({exc})") from exc

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    base = server.base_url
    # name -> (url, text that shows the page has loaded, check of what must be visible, whole page?)
    pages = {
        # The global asset lineage: the three groups dataset -> training -> evaluation ...
        "asset_lineage.png": (f"{base}/asset-groups", "Global asset lineage", None, False),
        # ... and the `dataset` group close up (partition fill, check results per asset).
        "asset_graph.png": (f"{base}/locations/{LOCATION}/asset-groups/dataset", "curated_dataset", None, False),
        "evaluation_report.png": (
            f"{base}/assets/evaluation_report",
            "Latest materialization",
            _check_evaluation_report_page,
            True,
        ),
        "curated_dataset.png": (f"{base}/assets/curated_dataset", "Latest materialization", None, True),
        "train_model_runs.png": (
            f"{base}/locations/{LOCATION}/jobs/train_model/runs",
            "train_model",
            lambda page: _check_job_page(page, train_run_id),
            False,
        ),
    }
    for name in pages:
        (ARTIFACTS / name).unlink(missing_ok=True)  # never assert on a stale screenshot
    written = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            # Nothing but the local server: any other host is refused.
            context.route(
                "**/*",
                lambda route: (
                    route.continue_()
                    if route.request.url.startswith(server.base_url) or route.request.url.startswith("data:")
                    else route.abort()
                ),
            )
            page = context.new_page()
            for name, (url, text, check, full_page) in pages.items():
                # The UI scrolls inside its own panes, so a "full page" screenshot needs a tall window.
                page.set_viewport_size({"width": 1600, "height": 4000 if full_page else 1000})
                page.goto(url, wait_until="domcontentloaded", timeout=60_000)
                page.get_by_text(text).first.wait_for(state="visible", timeout=60_000)
                _dismiss_community_dialog(page)
                try:
                    page.wait_for_load_state("networkidle", timeout=15_000)
                except Exception:  # the UI polls; a busy network is fine, the content is there
                    pass
                page.wait_for_timeout(1500)
                path = ARTIFACTS / name
                page.screenshot(path=str(path))
                written.append(path)
                if check is not None:
                    check(page)
        finally:
            browser.close()
    return written


def _assert_one_version_per_artifact(server: DagsterDev) -> None:
    """curated_dataset's DataVersion is its folder's name; each split's is the splits folder's;
    the model records the train split's DataVersion as its input."""
    latest = {}
    for asset in ("curated_dataset", "train_split", "fine_tuned_model"):
        data = server.gql(LATEST_VERSION, {"path": [asset]})["assetOrError"]["assetMaterializations"][0]
        tags = {t["key"]: t["value"] for t in data["tags"]}
        meta = {m["label"]: m for m in data["metadataEntries"]}
        latest[asset] = (tags["dagster/data_version"], meta)
    curated_version, curated_meta = latest["curated_dataset"]
    assert Path(curated_meta["path"]["path"]).parent.name == curated_version
    split_version, split_meta = latest["train_split"]
    assert Path(split_meta["path"]["path"]).parent.name == split_version
    assert split_meta["curated_version"]["text"] == curated_version
    assert latest["fine_tuned_model"][1]["train_split_version"]["text"] == split_version


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_ui_end_to_end(dagster_dev):
    server = dagster_dev
    from ft_pipeline.lib.sample_data import build_sample

    started = time.monotonic()
    names = sorted(build_sample())

    # 1. Partitions of log_files, one per sample file.
    for name in names:
        result = server.gql(ADD_PARTITION, {"repo": REPO_SELECTOR, "key": name})["addDynamicPartition"]
        assert result["__typename"] == "AddDynamicPartitionSuccess", result

    # 2. One ingest run per partition, then the training run.
    ingest = [_launch(server, "ingest_log_file", tags={"dagster/partition": name}) for name in names]
    statuses = _wait_runs(server, ingest, timeout=180)
    assert set(statuses.values()) == {"SUCCESS"}, statuses
    print(f"ingest done after {time.monotonic() - started:.0f}s")

    train = _launch(server, "train_model", run_config=TRAIN_RUN_CONFIG)
    status = _wait_runs(server, [train], timeout=480)[train]
    details = _run_details(server, train)
    materialized = {"/".join(m["assetKey"]["path"]) for m in details["assetMaterializations"]}
    assert {"curated_dataset", "fine_tuned_model", "evaluation_report"} <= materialized, (status, details["stepStats"])
    if status != "SUCCESS":
        # The only acceptable failure: the blocking promotion gate said no, so promoted_model did not run.
        failed_steps = {s["stepKey"] for s in details["stepStats"] if s["status"] == "FAILURE"}
        assert not failed_steps, (status, failed_steps, server.log_tail())
        gate = [
            e["evaluation"]
            for e in details["assetCheckEvaluations"]["events"]
            if e["__typename"] == "AssetCheckEvaluationEvent" and e["evaluation"]["checkName"] == "promotion_gate"
        ]
        assert gate and not gate[0]["success"], (status, details["stepStats"])
    for asset in ("fine_tuned_model", "evaluation_report"):
        mats = server.gql(LAST_MATERIALIZATION, {"path": [asset]})["assetOrError"]["assetMaterializations"]
        assert mats and mats[0]["runId"] == train, (asset, mats)
    _assert_one_version_per_artifact(server)
    print(f"train_model {status} after {time.monotonic() - started:.0f}s")

    # 3. The new-file sensor: one run per new file, and only one.
    sensor = {**REPO_SELECTOR, "sensorName": "new_log_files"}
    result = server.gql(START_SENSOR, {"sel": sensor})["startSensor"]
    assert result["__typename"] == "Sensor" and result["sensorState"]["status"] == "RUNNING", result
    interval = result["minIntervalSeconds"]
    new_name = NEW_FILE
    sample = build_sample(seed=11)["support_2024-05-01.jsonl"]
    (server.data_dir / "raw" / new_name).write_bytes(sample)

    def new_file_runs():
        return _runs(server, tags=[{"key": "dagster/partition", "value": new_name}])

    try:
        runs = wait_until(new_file_runs, timeout=150, interval=3.0, what=f"a sensor run for {new_name}")
    except TimeoutError:
        print(server.gql(SENSOR_TICKS, {"sel": sensor}))
        raise
    assert len(runs) == 1, runs
    tags = {t["key"]: t["value"] for t in runs[0]["tags"]}
    assert tags.get("dagster/sensor_name") == "new_log_files", tags

    # One more tick must not start a second run for the same file (the interval is 30 s).
    def latest_tick():
        ticks = server.gql(SENSOR_TICKS, {"sel": sensor})["sensorOrError"]["sensorState"]["ticks"]
        return max(ticks, key=lambda t: t["timestamp"]) if ticks else None

    seen_at = latest_tick()["timestamp"]

    # 4. The nightly schedule: running, next tick at 02:00 UTC.
    schedule = {**REPO_SELECTOR, "scheduleName": "nightly_retrain"}
    result = server.gql(START_SCHEDULE, {"sel": schedule})["startSchedule"]
    assert result["__typename"] == "ScheduleStateResult" and result["scheduleState"]["status"] == "RUNNING", result
    info = server.gql(SCHEDULE, {"sel": schedule})["scheduleOrError"]
    assert info["scheduleState"]["status"] == "RUNNING", info
    assert info["cronSchedule"] == "0 2 * * *" and info["executionTimezone"] == "UTC", info
    next_tick = dt.datetime.fromtimestamp(info["futureTicks"]["results"][0]["timestamp"], tz=dt.UTC)
    now = dt.datetime.now(dt.UTC)
    assert (next_tick.hour, next_tick.minute, next_tick.second) == (2, 0, 0), next_tick
    assert now < next_tick <= now + dt.timedelta(days=1), (now, next_tick)

    # 5. The sensor's run is the only one for the new file, also after one more tick, and it succeeds.
    def another_tick():
        tick = latest_tick()
        return tick["timestamp"] > seen_at and tick["status"] != "STARTED"

    wait_until(another_tick, timeout=interval + 45, interval=3.0, what="one more sensor tick")
    assert len(new_file_runs()) == 1, new_file_runs()
    # The five files ingested before the sensor was on have the same content: no runs for them.
    sensor_runs = _runs(server, tags=[{"key": "dagster/sensor_name", "value": "new_log_files"}])
    assert [r["runId"] for r in sensor_runs] == [runs[0]["runId"]], sensor_runs
    status = _wait_runs(server, [runs[0]["runId"]], timeout=180)[runs[0]["runId"]]
    assert status == "SUCCESS", status
    print(f"sensor and schedule done after {time.monotonic() - started:.0f}s")

    # 6. The UI itself in a headless browser, once every run has finished (skipped at the very end
    # if no browser is available; nothing above depends on it).
    browser_skip = None
    shots: list[Path] = []
    try:
        shots = _screenshots(server, train)
    except BrowserUnavailable as exc:
        browser_skip = str(exc)
    for path in shots:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", path
        assert len(data) > 20_000, (path, len(data))
    print(f"e2e done after {time.monotonic() - started:.0f}s; screenshots: {[str(p) for p in shots]}")
    if browser_skip:
        pytest.skip(f"browser part skipped: {browser_skip}; everything else passed")
