"""v1 -> v2 configuration migration: the v1 bridge's .env, the v1 controller's TOML, the old
migration script's provider lists; dimension inference, secrets, backups, and a round trip
through the router's own `check-config`.

The sample files live in tests/data/v1/ and are copied to a temporary directory per test, so the
backups and outputs the migrator writes land there.
"""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import pytest
import yaml

from embedding_service.config import EmbeddingConfig
from router_service.check_config import check_config_main
from router_service.config import RouterConfig
from sekha_cli.config_migrate import (
    MigrationError,
    migrate_file,
    parse_dotenv,
    plan_migration,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "v1"
SECRET_MARK = "DO-NOT-COPY"


def copy_sample(name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copy(DATA / name, target)
    return target


def load_yaml(path: Path) -> dict:  # type: ignore[type-arg]
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def provider(config: dict, provider_id: str) -> dict:  # type: ignore[type-arg]
    return next(p for p in config["providers"] if p["id"] == provider_id)


def model(entry: dict, model_id: str) -> dict:  # type: ignore[type-arg]
    return next(m for m in entry["models"] if m["id"] == model_id)


def unmapped_keys(report) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return dict(report.unmapped)


# ------------------------------------------------------------------------------------- formats


def test_bridge_env_file_maps_ollama_models_and_key_references(tmp_path: Path) -> None:
    old = copy_sample("bridge.env", tmp_path)
    new = tmp_path / "router.yaml"
    report = migrate_file(old, new)

    config = load_yaml(new)
    ollama = provider(config, "ollama")
    assert ollama["type"] == "ollama" and ollama["base_url"] == "http://ollama.internal:11434"
    assert ollama["timeout_s"] == 90
    assert model(ollama, "nomic-embed-text") == {
        "id": "nomic-embed-text",
        "tasks": ["embedding"],
        "embedding_dimension": 768,
        "price": {"input_per_million": 0, "output_per_million": 0},
    }
    assert model(ollama, "llama3.1:8b")["tasks"] == ["chat_smart"]  # SUMMARIZATION_MODEL, prefix stripped
    assert model(ollama, "llama3.2:3b")["tasks"] == ["chat_small"]  # EXTRACTION_MODEL, comment stripped
    assert provider(config, "openai")["api_key"] == "${OPENAI_API_KEY}"
    assert provider(config, "anthropic")["api_key"] == "${ANTHROPIC_API_KEY}"
    assert [p["id"] for p in config["providers"]] == ["ollama", "openai", "anthropic"]  # local first

    skipped = unmapped_keys(report)
    assert "SEKHA_LOG_LEVEL=DEBUG" in skipped["LOG_LEVEL"]
    assert skipped["BRIDGE_FANCY_FEATURE"] == "unknown v1 setting"
    assert "queue" in skipped["CELERY_BROKER_URL"]
    mapped = dict(report.mapped)
    if "state" in RouterConfig.model_fields:
        assert config["state"] == {"backend": "redis", "redis_url": "redis://localhost:6379/0"}
        assert "REDIS_URL" in mapped
    else:
        assert "REDIS_URL" in skipped and "state" not in config
    assert set(report.env_references) == {"OPENAI_API_KEY", "ANTHROPIC_API_KEY"}
    assert report.written == [new]


def test_controller_toml_maps_chroma_to_an_embedding_config_and_reports_the_rest(tmp_path: Path) -> None:
    old = copy_sample("controller.toml", tmp_path)
    new = tmp_path / "out" / "router.yaml"
    report = migrate_file(old, new)

    config = load_yaml(new)
    # text-embedding-3-small is an OpenAI model in LiteLLM's map: its dimension comes from there
    assert model(provider(config, "openai"), "text-embedding-3-small")["embedding_dimension"] == 1536
    assert model(provider(config, "ollama"), "llama3.1:8b")["tasks"] == ["chat_smart"]
    embedding_path = tmp_path / "out" / "router.embedding.yaml"
    assert report.written == [new, embedding_path]
    embedding = load_yaml(embedding_path)
    assert embedding["chroma"] == {"mode": "http", "host": "chroma.internal", "port": 8000}
    assert embedding["defaults"] == {"model": "openai/text-embedding-3-small"}
    loaded = EmbeddingConfig.load(embedding_path, environ={})
    assert (loaded.chroma.mode, loaded.chroma.host, loaded.chroma.port) == ("http", "chroma.internal", 8000)

    # controller.toml: rate_limit_per_minute = 120, a per-client limit in v1
    assert config["rate_limits"] == {"default_caller": {"requests_per_minute": 120}}
    assert RouterConfig.load(new, environ={"OPENAI_API_KEY": "x"}).rate_limits.default_caller is not None
    skipped = unmapped_keys(report)
    assert "rate_limit_per_minute" not in skipped
    assert "gRPC" in skipped["llm_bridge_url"] or "router" in skipped["llm_bridge_url"]
    assert "sekha keys hash" in skipped["mcp_api_key"]
    assert {
        "database.url",
        "server_port",
        "summarization_enabled",
        "pruning_enabled",
        "max_connections",
    } <= set(skipped)
    assert "SEKHA_LOG_LEVEL=INFO" in skipped["log_level"]


def test_old_migration_script_spellings(tmp_path: Path) -> None:
    old = copy_sample("old_script.toml", tmp_path)
    new = tmp_path / "router.yaml"
    report = migrate_file(old, new)

    config = load_yaml(new)
    local = provider(config, "ollama_local")
    assert (local["type"], local["base_url"], local["timeout_s"], local["priority"]) == (
        "ollama",
        "http://gpu-box:11434",
        300,
        1,
    )
    assert (
        model(local, "mxbai-embed-large:latest")["embedding_dimension"] == 1024
    )  # tag stripped for the lookup
    qwen = model(local, "qwen2.5:7b")
    assert (qwen["tasks"], qwen["context_window"], qwen["capabilities"]) == (["chat_smart"], 32768, ["tools"])
    assert [m["id"] for m in local["models"]] == ["mxbai-embed-large:latest", "qwen2.5:7b"]
    cloud = provider(config, "openai_cloud")
    assert (cloud["timeout_s"], cloud["api_key"]) == (60, "${OPENAI_API_KEY}")
    assert model(cloud, "gpt-4o") == {"id": "gpt-4o", "tasks": ["chat_large"], "capabilities": ["vision"]}

    skipped = unmapped_keys(report)
    assert "dimension could not be inferred" in skipped["llm_providers[0].models[2]"]  # mystery-embedder
    assert "image_generation" in skipped["llm_providers[0].models[3].task"]
    assert skipped["llm_providers[1].colour"] == "unknown provider setting"
    assert any("NOT copied" in note for note in report.notes)
    embedding = load_yaml(tmp_path / "router.embedding.yaml")
    assert embedding["chroma"] == {"mode": "http", "host": "vectors.example.com", "port": 443, "ssl": True}


# ------------------------------------------------------------------------- secrets and round trip


@pytest.mark.parametrize("sample", ["bridge.env", "controller.toml", "old_script.toml"])
def test_secrets_are_never_written_and_the_output_passes_check_config(sample: str, tmp_path: Path) -> None:
    old = copy_sample(sample, tmp_path)
    new = tmp_path / "router.yaml"
    report = migrate_file(old, new)

    for written in report.written:
        assert SECRET_MARK not in written.read_text(encoding="utf-8")
    assert SECRET_MARK not in report.render()
    assert SECRET_MARK in report.backup.read_text(encoding="utf-8")  # type: ignore[union-attr]

    environ = {name: "sk-test-value" for name in report.env_references}
    out, err = io.StringIO(), io.StringIO()
    assert check_config_main(new, environ=environ, out=out, err=err) == 0, err.getvalue()
    assert "OK" in out.getvalue()
    loaded = RouterConfig.load(new, environ=environ)
    assert {p.id for p in loaded.providers} == {p["id"] for p in load_yaml(new)["providers"]}
    if report.env_references:
        # the references are real: without the variables the router refuses to start
        assert check_config_main(new, environ={}, out=io.StringIO(), err=io.StringIO()) == 1


def test_backup_is_made_and_outputs_are_not_overwritten_without_force(tmp_path: Path) -> None:
    old = copy_sample("bridge.env", tmp_path)
    original = hashlib.sha256(old.read_bytes()).hexdigest()
    new = tmp_path / "router.yaml"
    first = migrate_file(old, new)
    assert first.backup == tmp_path / "bridge.env.bak"
    assert hashlib.sha256(first.backup.read_bytes()).hexdigest() == original

    new.write_text("# hand edits\n", encoding="utf-8")
    with pytest.raises(MigrationError, match="pass --force"):
        migrate_file(old, new)
    assert new.read_text(encoding="utf-8") == "# hand edits\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bridge.env", "bridge.env.bak", "router.yaml"]

    second = migrate_file(old, new, force=True)
    assert second.backup is not None and second.backup != first.backup  # timestamped, the first kept
    assert second.backup.name.startswith("bridge.env.") and second.backup.name.endswith(".bak")
    assert load_yaml(new)["providers"][0]["id"] == "ollama"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_missing_input_is_an_error_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="file not found"):
        migrate_file(tmp_path / "absent.env", tmp_path / "router.yaml")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- dimension inference


def test_dimension_inference_from_litellm_then_the_ollama_table() -> None:
    known = plan_migration({"EMBEDDING_MODEL": "text-embedding-3-small", "OPENAI_API_KEY": "x"})
    assert model(provider(known.router, "openai"), "text-embedding-3-small")["embedding_dimension"] == 1536

    for name, dimension in [
        ("nomic-embed-text", 768),
        ("all-minilm:l6-v2", 384),
        ("ollama/bge-m3", 1024),
        ("snowflake-arctic-embed:335m", 1024),
    ]:
        plan = plan_migration({"OLLAMA_URL": "http://127.0.0.1:11434", "EMBEDDING_MODEL": name})
        entry = provider(plan.router, "ollama")["models"][0]
        assert entry["embedding_dimension"] == dimension, name


def test_an_embedding_model_of_unknown_dimension_is_left_out_and_reported() -> None:
    plan = plan_migration(
        {
            "OLLAMA_URL": "http://127.0.0.1:11434",
            "EMBEDDING_MODEL": "my-own-embedder",
            "SUMMARIZATION_MODEL": "qwen2.5",
        }
    )
    assert [m["id"] for m in provider(plan.router, "ollama")["models"]] == ["qwen2.5"]
    assert "dimension could not be inferred" in unmapped_keys(plan.report)["EMBEDDING_MODEL"]
    with pytest.raises(MigrationError, match="nothing to migrate"):
        plan_migration({"EMBEDDING_MODEL": "my-own-embedder"})


def test_same_model_for_two_settings_serves_both_tasks() -> None:
    plan = plan_migration({"SUMMARIZATION_MODEL": "llama3.1", "EXTRACTION_MODEL": "ollama/llama3.1"})
    ollama = provider(plan.router, "ollama")
    assert ollama["models"] == [
        {
            "id": "llama3.1",
            "tasks": ["chat_small", "chat_smart"],
            "price": {"input_per_million": 0, "output_per_million": 0},
        }
    ]
    assert ollama["base_url"] == "http://localhost:11434"  # the v1 default, and said so
    assert any("v1 default" in note for note in plan.report.notes)


def test_parse_dotenv_handles_comments_quotes_and_export() -> None:
    text = (
        "# comment\n\n"
        "export A=1\n"
        "B = 'two words'  # trailing\n"
        'C="quoted # not a comment"\n'
        "D=plain value # comment\n"
        "E=\n"
        "not a setting\n"
    )
    assert parse_dotenv(text) == {
        "A": "1",
        "B": "two words",
        "C": "quoted # not a comment",
        "D": "plain value",
        "E": "",
    }


def test_a_url_holding_a_password_becomes_an_environment_reference(tmp_path: Path) -> None:
    old = tmp_path / "v1.env"
    old.write_text(
        "OLLAMA_URL=http://admin:hunter2-DO-NOT-COPY@gpu:11434\nEMBEDDING_MODEL=nomic-embed-text\n",
        encoding="utf-8",
    )
    new = tmp_path / "router.yaml"
    report = migrate_file(old, new)
    assert provider(load_yaml(new), "ollama")["base_url"] == "${OLLAMA_URL}"
    assert SECRET_MARK not in new.read_text(encoding="utf-8") and SECRET_MARK not in report.render()
    environ = {"OLLAMA_URL": "http://admin:pw@gpu:11434"}
    assert check_config_main(new, environ=environ, out=io.StringIO(), err=io.StringIO()) == 0


# ------------------------------------------------------------------ the report matches the file


def test_a_key_whose_provider_is_left_out_is_reported_as_not_mapped(tmp_path: Path) -> None:
    old = tmp_path / "v1.env"
    old.write_text(
        "OLLAMA_URL=http://127.0.0.1:11434\nEXTRACTION_MODEL=llama3.2:3b\n"
        "OPENROUTER_API_KEY=sk-or-DO-NOT-COPY\n",
        encoding="utf-8",
    )
    new = tmp_path / "router.yaml"
    report = migrate_file(old, new)
    written = load_yaml(new)
    assert [p["id"] for p in written["providers"]] == ["ollama"]  # openrouter: no model to serve
    mapped = dict(report.mapped)
    assert "OPENROUTER_API_KEY" not in mapped
    assert "left out" in unmapped_keys(report)["OPENROUTER_API_KEY"]
    # every mapping points into the file that was written, and only its variables are named
    provider_ids = {p["id"] for p in written["providers"]}
    for target in mapped.values():
        if target.startswith("providers["):
            assert target[len("providers[") :].split("]", 1)[0] in provider_ids, target
    assert report.env_references == []
    assert "OPENROUTER_API_KEY" not in report.render().split("not mapped")[0]


def test_default_model_becomes_the_preferred_chat_model(tmp_path: Path) -> None:
    old = tmp_path / "v1.env"
    old.write_text(
        "OLLAMA_URL=http://127.0.0.1:11434\nSUMMARIZATION_MODEL=llama3.1:8b\n"
        "DEFAULT_MODEL=gpt-4o\nOPENAI_API_KEY=sk-DO-NOT-COPY\n",
        encoding="utf-8",
    )
    new = tmp_path / "router.yaml"
    report = migrate_file(old, new)
    assert "DEFAULT_MODEL" not in unmapped_keys(report)
    assert dict(report.mapped)["DEFAULT_MODEL"].startswith("providers[openai].models[gpt-4o]")
    written = load_yaml(new)
    openai = provider(written, "openai")
    assert model(openai, "gpt-4o")["tasks"] == ["chat_small", "chat_smart"]
    assert openai["priority"] < provider(written, "ollama")["priority"]  # tried first
    loaded = RouterConfig.load(new, environ={"OPENAI_API_KEY": "x"})
    assert min(loaded.providers, key=lambda p: p.priority).id == "openai"
