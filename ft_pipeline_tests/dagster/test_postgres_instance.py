"""The whole graph on PostgreSQL: a Dagster instance configured exactly as the commented block in
dagster.yaml documents (run, event-log and schedule storage in PostgreSQL, credentials from
DAGSTER_PG_* variables) and the model registry at FT_PIPELINE_REGISTRY_URL on the same server.

Needs a real server (the ``postgres_url`` fixture: FT_PIPELINE_TEST_POSTGRES_URL or a throwaway
cluster from the installed binaries); skipped, with the reason, on machines with neither."""

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from ft_pipeline.definitions import DOWNSTREAM_ASSETS, default_resources
from ft_pipeline.defs.partitions import log_files_partitions
from ft_pipeline.lib.sample_data import build_sample
from ft_pipeline_tests.conftest import resources_for
from ft_pipeline_tests.dagster.whole_graph import evaluate_sample, run_assets
from ft_pipeline_tests.postgres_server import create_database, drop_database, sqlalchemy_url

# The whole graph on a PostgreSQL-backed instance (minutes on 2 cores); also marked postgres.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
MODEL = "ft-pipeline-assistant"


def documented_instance_config() -> dict:
    """The repo's dagster.yaml with its storage block replaced by the commented PostgreSQL block,
    as that comment tells a deployer to do. The default stays SQLite."""
    text = (REPO / "dagster.yaml").read_text()
    block = re.search(r"^# storage:\n(?:#   .*\n)+", text, re.M)
    assert block, "dagster.yaml no longer documents a PostgreSQL storage block (a commented '# storage:' block)"
    postgres = yaml.safe_load("".join(line[2:] + "\n" for line in block.group(0).splitlines()))["storage"]
    config = yaml.safe_load(text)
    assert list(config["storage"]) == ["sqlite"], "the shipped default must stay SQLite"
    assert list(postgres) == ["postgres"] and "password" in postgres["postgres"]["postgres_db"]
    return {**config, "storage": postgres}


def _set_dagster_pg_env(monkeypatch, url: str) -> None:
    parts = urlsplit(url)
    monkeypatch.setenv("DAGSTER_PG_USERNAME", unquote(parts.username or ""))
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", unquote(parts.password or ""))
    monkeypatch.setenv("DAGSTER_PG_HOST", parts.hostname or "")
    monkeypatch.setenv("DAGSTER_PG_PORT", str(parts.port or 5432))
    monkeypatch.setenv("DAGSTER_PG_DB", parts.path.lstrip("/"))


@pytest.fixture
def registry_database_url(postgres_url):
    """The registry in its own database on the same server, as deployed."""
    url = create_database(postgres_url, "ft_registry")
    yield url
    drop_database(postgres_url, url)


def _rows(url: str, query: str, **params) -> list[tuple]:
    engine = sa.create_engine(sqlalchemy_url(url))
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(query), params)]
    finally:
        engine.dispose()


def test_whole_graph_on_documented_postgres_storage(
    postgres_database_url, registry_database_url, tmp_path, monkeypatch
):
    _set_dagster_pg_env(monkeypatch, postgres_database_url)
    monkeypatch.setenv("FT_PIPELINE_REGISTRY_URL", sqlalchemy_url(registry_database_url))
    config = documented_instance_config()
    data_dir = tmp_path / "data"
    # The registry comes from FT_PIPELINE_REGISTRY_URL, the way the definitions build it.
    resources = {**resources_for(data_dir), "model_registry": default_resources()["model_registry"]}
    homes = tmp_path / "home", tmp_path / "other-home"
    for home in homes:
        home.mkdir()

    with dg.instance_for_test(overrides=config, temp_dir=str(homes[0])) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        evaluate_sample(instance, data_dir, resources)
        promoted = run_assets(instance, resources, [DOWNSTREAM_ASSETS[-1]])
        assert promoted.success
        latest = instance.fetch_materializations(dg.AssetKey("promoted_model"), limit=1).records
        assert [r.run_id for r in latest] == [promoted.run_id]
        n_runs = len(instance.get_runs())

    names = sorted(build_sample())
    assert n_runs == len(names) + 2  # one per log file, the dataset-to-evaluation run, promotion

    # Everything is in PostgreSQL, read with plain SQL rather than through Dagster...
    runs = _rows(postgres_database_url, "SELECT run_id, status FROM runs")
    assert len(runs) == n_runs and {status for _, status in runs} == {"SUCCESS"}
    assert promoted.run_id in {run_id for run_id, _ in runs}
    materialized = {
        key
        for (key,) in _rows(
            postgres_database_url,
            "SELECT DISTINCT asset_key FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'",
        )
    }
    assert {k.to_string() for a in DOWNSTREAM_ASSETS for k in a.keys} <= materialized
    assert dg.AssetKey("raw_conversation_logs").to_string() in materialized
    partitions = _rows(
        postgres_database_url,
        "SELECT partition FROM dynamic_partitions WHERE partitions_def_name = :name ORDER BY partition",
        name=log_files_partitions.name,
    )
    assert [p for (p,) in partitions] == names
    gate = _rows(
        postgres_database_url,
        "SELECT execution_status FROM asset_check_executions WHERE asset_key = :key AND check_name = 'promotion_gate'",
        key=dg.AssetKey("evaluation_report").to_string(),
    )
    assert gate == [("SUCCEEDED",)]
    # ... and nothing went to SQLite files in DAGSTER_HOME.
    assert not [p for p in homes[0].rglob("*") if p.suffix in (".db", ".sqlite")]

    # Shared state, the point of PostgreSQL: another instance (another DAGSTER_HOME, as the
    # webserver or a run worker elsewhere would have) on the same database sees the same history.
    with dg.instance_for_test(overrides=config, temp_dir=str(homes[1])) as other:
        seen = other.fetch_materializations(dg.AssetKey("promoted_model"), limit=1).records
        assert [(r.run_id, r.storage_id) for r in seen] == [(promoted.run_id, latest[0].storage_id)]
        assert other.get_dynamic_partitions(log_files_partitions.name) == names
        assert len(other.get_runs()) == n_runs
        gate_key = dg.AssetCheckKey(dg.AssetKey("evaluation_report"), "promotion_gate")
        record = other.event_log_storage.get_latest_asset_check_execution_by_key([gate_key])[gate_key]
        assert record.status.value == "SUCCEEDED" and record.run_id in {run_id for run_id, _ in runs}

    # The registry row the promotion wrote is in PostgreSQL, not in a SQLite file in the data dir.
    assert _rows(
        registry_database_url, "SELECT version, lifecycle FROM model_versions WHERE model_name = :m", m=MODEL
    ) == [(1, "production")]
    assert _rows(registry_database_url, "SELECT alias, version FROM aliases WHERE model_name = :m", m=MODEL) == [
        ("production", 1)
    ]
    assert _rows(
        registry_database_url, "SELECT action, to_version FROM alias_events WHERE model_name = :m", m=MODEL
    ) == [("promote", 1)]
    assert not (data_dir / "registry.db").exists()
