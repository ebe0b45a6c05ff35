"""Publishing a model folder to object storage (fsspec URLs) and checking it against its manifest."""

import json
import uuid

import fsspec
import pytest

from ft_pipeline.lib.publish import MANIFEST, publish_model_dir, verify_published


def _run_dir(tmp_path):
    run = tmp_path / "models" / "abc123"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"\x00" * 1000)
    (run / "adapter" / "adapter_config.json").write_text('{"r": 16}')
    (run / "tokenizer").mkdir()
    (run / "tokenizer" / "tokenizer.json").write_text("{}")
    (run / "model.json").write_text("{}")
    (run / "checkpoints" / "checkpoint-10").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-10" / "optimizer.pt").write_bytes(b"\x01" * 5000)
    return run


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_publish_uploads_everything_but_checkpoints_with_a_manifest(tmp_path, scheme):
    run = _run_dir(tmp_path)
    base = f"file://{tmp_path / 'bucket'}" if scheme == "file" else f"memory://models-{uuid.uuid4().hex}"
    published = publish_model_dir(run, base, "support-bot", 3)
    assert published.uri == f"{base}/support-bot/v3"
    assert published.files == 4 and published.bytes == 1000 + len('{"r": 16}') + 2 + 2
    fs, root = fsspec.core.url_to_fs(published.uri)
    names = sorted(p[len(root.rstrip("/")) + 1 :] for p in fs.find(root))
    assert names == [
        MANIFEST,
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "model.json",
        "tokenizer/tokenizer.json",
    ]
    manifest = json.loads(fs.cat_file(f"{root.rstrip('/')}/{MANIFEST}"))
    assert manifest["version"] == 3 and len(manifest["files"]) == 4
    assert verify_published(published.uri) == []

    # A file changed or lost after publishing is reported, not trusted.
    fs.pipe_file(f"{root.rstrip('/')}/model.json", b'{"tampered": true}')
    fs.rm_file(f"{root.rstrip('/')}/tokenizer/tokenizer.json")
    assert sorted(verify_published(published.uri)) == [
        "model.json: sha256 differs from the manifest",
        "tokenizer/tokenizer.json: missing",
    ]


def test_incomplete_upload_has_no_manifest(tmp_path):
    url = f"memory://models-{uuid.uuid4().hex}/m/v1"
    fsspec.filesystem("memory").pipe_file(url.removeprefix("memory://") + "/adapter/x.bin", b"x")
    assert verify_published(url) == [f"{url}: no {MANIFEST} (upload incomplete)"]


def test_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to publish"):
        publish_model_dir(tmp_path / "nope", f"file://{tmp_path}/bucket", "m", 1)


def test_registry_records_where_a_version_was_published(tmp_path):
    from ft_pipeline.lib.registry import ModelRegistry, NotFound
    from ft_pipeline_tests.unit.test_registry import MODEL, _candidate

    with ModelRegistry(f"sqlite:///{tmp_path / 'registry.db'}") as reg:
        mv = _candidate(reg, 1)
        updated = reg.update_tags(MODEL, mv.version, {"published_uri": "s3://b/m/v1"})
        assert updated.tags == {"n": 1, "published_uri": "s3://b/m/v1"}
        assert reg.get_version(MODEL, mv.version).tags == updated.tags
        with pytest.raises(NotFound):
            reg.update_tags(MODEL, 99, {"x": 1})
