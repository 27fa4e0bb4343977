"""Router configuration: loading, variable expansion, environment overrides and error messages."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import pytest

from embedding_service.config import EmbeddingConfig
from router_service.check_config import check_config_main
from router_service.config import RouterConfig, default_config_text
from router_service.domain import Capability, Task
from router_service.model_registry import ModelInfo, StaticModelInfo
from sekha.keys import hash_api_key
from sekha_runtime.configloader import ConfigError

REPO = Path(__file__).resolve().parents[2]
DEPLOY_CONFIGS = sorted((REPO / "deploy" / "config").glob("router.*.yaml"))
CLOUD_KEYS = {"OPENAI_API_KEY": "sk-test-openai", "ANTHROPIC_API_KEY": "sk-test-anthropic"}

MINIMAL = """
providers:
  - id: openai
    type: openai
    api_key: sk-abc
    models:
      - id: gpt-4o-mini
        tasks: [chat_small, chat_smart]
"""


def write(tmp_path: Path, text: str, name: str = "router.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def errors_of(
    tmp_path: Path, text: str, environ: dict[str, str] | None = None, **kwargs: object
) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        RouterConfig.load(write(tmp_path, text), environ=environ or {}, **kwargs)  # type: ignore[arg-type]
    return caught.value.errors


# -- files that must load --------------------------------------------------------------------


def test_minimal_file_gets_every_default(tmp_path: Path) -> None:
    config = RouterConfig.load(write(tmp_path, MINIMAL), environ={})
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 50051
    assert config.server.reflection is False
    assert config.server.max_message_bytes == 16 * 1024 * 1024
    assert config.circuit_breaker.failure_threshold == 5
    assert config.circuit_breaker.window_size == 20
    assert config.retry.max_attempts == 3
    assert config.limits.default_max_tokens == 512
    assert config.limits.max_output_tokens == 32768
    provider = config.providers[0]
    assert provider.priority == 50
    assert provider.timeout_s == 60
    assert provider.transport == "auto"
    assert provider.api_key is not None and provider.api_key.get_secret_value() == "sk-abc"
    assert "sk-abc" not in repr(provider)
    assert provider.models[0].tasks == [Task.CHAT_SMALL, Task.CHAT_SMART]
    assert provider.models[0].capabilities is None


def test_embedded_default_loads_without_any_file_or_variable() -> None:
    config = RouterConfig.load(None, environ={})
    by_id = {p.id: p for p in config.providers}
    assert by_id["local"].models[0].id == "all-minilm-l6-v2"
    assert by_id["local"].models[0].embedding_dimension == 384
    assert by_id["ollama"].base_url == "http://127.0.0.1:11434"
    assert by_id["ollama"].models[0].tasks == [Task.CHAT_SMALL, Task.CHAT_SMART]
    assert by_id["ollama"].models[0].price is not None
    assert "providers:" in default_config_text()


def test_default_config_takes_ollama_url_from_the_environment() -> None:
    config = RouterConfig.load(None, environ={"OLLAMA_URL": "http://ollama:11434/"})
    assert config.provider("ollama").base_url == "http://ollama:11434"  # type: ignore[union-attr]


def test_sekha_config_variable_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    config = RouterConfig.load(None, environ={"SEKHA_CONFIG": str(path)})
    assert [p.id for p in config.providers] == ["openai"]


@pytest.mark.parametrize("path", DEPLOY_CONFIGS, ids=lambda p: p.name)
def test_deploy_configs_validate(path: Path) -> None:
    config = RouterConfig.load(path, environ=CLOUD_KEYS)
    assert config.providers
    assert any(Task.EMBEDDING in m.tasks for p in config.providers for m in p.models)
    assert any(Task.CHAT_SMART in m.tasks for p in config.providers for m in p.models)


def test_three_deploy_scenarios_exist() -> None:
    assert [p.name for p in DEPLOY_CONFIGS] == [
        "router.cloud.yaml",
        "router.hybrid.yaml",
        "router.local.yaml",
    ]


def test_local_scenario_costs_nothing_and_hybrid_embeds_locally() -> None:
    local = RouterConfig.load(REPO / "deploy/config/router.local.yaml", environ={})
    assert {p.type for p in local.providers} == {"local", "ollama"}
    assert all(
        m.price is not None and m.price.input_per_million == 0 for p in local.providers for m in p.models
    )
    hybrid = RouterConfig.load(REPO / "deploy/config/router.hybrid.yaml", environ=CLOUD_KEYS)
    embedders = [p.type for p in hybrid.providers for m in p.models if Task.EMBEDDING in m.tasks]
    assert embedders == ["local"]
    chat = {p.type for p in hybrid.providers for m in p.models if Task.CHAT_SMART in m.tasks}
    assert chat and "local" not in chat and "ollama" not in chat


def test_provider_breaker_override_is_used_for_that_provider_only() -> None:
    hybrid = RouterConfig.load(REPO / "deploy/config/router.hybrid.yaml", environ=CLOUD_KEYS)
    assert hybrid.breaker_config_for("anthropic").failure_threshold == 3
    assert hybrid.breaker_config_for("openai") is hybrid.circuit_breaker


# -- one line per problem, naming the YAML path -----------------------------------------------


def test_unknown_task_names_the_exact_list_index(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        """
        providers:
          - id: a
            type: openai
            models: [{id: m, tasks: [chat_small]}]
          - id: b
            type: openai
            models:
              - id: m
                tasks: [chat_fancy]
        """,
    )
    assert errors == [
        "providers[1].models[0].tasks[0]: 'chat_fancy' is not one of "
        "embedding, chat_small, chat_smart, chat_large, vision, audio"
    ]


def test_unknown_capability(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        """
        providers:
          - id: a
            type: openai
            models: [{id: m, tasks: [chat_small], capabilities: [tools, telepathy]}]
        """,
    )
    assert errors == [
        "providers[0].models[0].capabilities[1]: 'telepathy' is not one of "
        "vision, audio, tools, structured_output, reasoning"
    ]


def test_duplicate_provider_id(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        """
        providers:
          - {id: openai, type: openai, models: [{id: m, tasks: [chat_small]}]}
          - {id: other, type: openai, models: [{id: m, tasks: [chat_small]}]}
          - {id: third, type: openai, models: [{id: m, tasks: [chat_small]}]}
          - {id: openai, type: anthropic, models: [{id: m, tasks: [chat_small]}]}
        """,
    )
    assert errors == ["providers[3].id: duplicate provider id 'openai' (first at providers[0])"]


def test_duplicate_model_id_within_a_provider(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        """
        providers:
          - id: openai
            type: openai
            models:
              - {id: gpt-4o, tasks: [chat_smart]}
              - {id: gpt-4o, tasks: [chat_large]}
          - id: other
            type: openai
            models: [{id: gpt-4o, tasks: [chat_smart]}]
        """,
    )
    assert errors == [
        "providers[0].models[1].id: duplicate model id 'gpt-4o' in provider 'openai' (first at models[0])"
    ]


def test_embedding_model_without_a_known_dimension(tmp_path: Path) -> None:
    text = """
        providers:
          - id: compat
            type: openai_compatible
            base_url: http://127.0.0.1:8000/v1
            models:
              - {id: my-embedder, tasks: [embedding]}
              - {id: sized-embedder, tasks: [embedding], embedding_dimension: 768}
    """
    errors = errors_of(tmp_path, text, model_info=StaticModelInfo({}))
    assert errors == [
        "providers[0].models[0].embedding_dimension: model 'my-embedder' has task embedding but its vector "
        "dimension is unknown (not in LiteLLM's model info); set embedding_dimension"
    ]


def test_embedding_dimension_may_come_from_model_info_or_the_local_table(tmp_path: Path) -> None:
    text = """
        providers:
          - id: local
            type: local
            models: [{id: all-MiniLM-L6-v2, tasks: [embedding]}]
          - id: compat
            type: openai_compatible
            base_url: http://127.0.0.1:8000/v1
            models: [{id: my-embedder, tasks: [embedding]}]
    """
    source = StaticModelInfo({"openai/my-embedder": ModelInfo(embedding_dimension=1024)})
    config = RouterConfig.load(write(tmp_path, text), environ={}, model_info=source)
    assert len(config.providers) == 2


def test_litellm_model_info_supplies_the_dimension_of_known_models(tmp_path: Path) -> None:
    text = """
        providers:
          - id: openai
            type: openai
            models: [{id: text-embedding-3-small, tasks: [embedding]}]
    """
    config = RouterConfig.load(write(tmp_path, text), environ={})  # LiteLLM's bundled map: 1536
    assert config.providers[0].models[0].embedding_dimension is None


def test_priority_out_of_range(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        """
        providers:
          - {id: a, type: openai, priority: 150, models: [{id: m, tasks: [chat_small]}]}
          - {id: b, type: openai, priority: 0, models: [{id: m, tasks: [chat_small]}]}
        """,
    )
    assert errors == [
        "providers[0].priority: must be less than or equal to 100 (got 150)",
        "providers[1].priority: must be greater than or equal to 1 (got 0)",
    ]


@pytest.mark.parametrize("provider_type", ["ollama", "openai_compatible"])
def test_base_url_required_for_self_hosted_types(tmp_path: Path, provider_type: str) -> None:
    errors = errors_of(
        tmp_path,
        f"""
        providers:
          - {{id: a, type: {provider_type}, models: [{{id: m, tasks: [chat_small]}}]}}
        """,
    )
    assert errors == [f"providers[0].base_url: required for provider type '{provider_type}'"]


def test_base_url_must_be_http(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        """
        providers:
          - {id: a, type: ollama, base_url: "ftp://host", models: [{id: m, tasks: [chat_small]}]}
        """,
    )
    assert errors == ["providers[0].base_url: 'ftp://host' is not an http(s) URL"]


def test_unknown_key_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        """
        server: {prot: 1234}
        circuit_breaker: {reset_timeout: 3}
        providers:
          - {id: a, type: openai, bse_url: "http://x", models: [{id: m, tasks: [chat_small]}]}
        """,
    )
    assert errors == [
        "server.prot: unknown field (did you mean 'port'?)",
        "circuit_breaker.reset_timeout: unknown field (did you mean 'reset_timeout_s'?)",
        "providers[0].bse_url: unknown field (did you mean 'base_url'?)",
    ]


def test_missing_required_fields(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        """
        providers:
          - id: a
            models: [{id: m}]
        """,
    )
    assert errors == [
        "providers[0].type: required field is missing",
        "providers[0].models[0].tasks: required field is missing",
    ]


def test_empty_lists_and_wrong_types(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        """
        server: {port: http}
        providers:
          - {id: a, type: openai, timeout_s: soon, models: []}
        """,
    )
    assert errors == [
        "server.port: expected an integer, got 'http'",
        "providers[0].timeout_s: expected a number, got 'soon'",
        "providers[0].models: must list at least 1 item",
    ]


def test_unknown_provider_type_and_bad_id(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        """
        providers:
          - {id: My Provider, type: opnai, models: [{id: m, tasks: [chat_small]}]}
        """,
    )
    assert errors[0].startswith("providers[0].id: 'My Provider' is not a valid provider id")
    assert errors[1].startswith(
        "providers[0].type: 'opnai' is not a known provider type (did you mean 'openai'?)"
    )
    assert len(errors) == 2


def test_any_litellm_provider_name_is_a_valid_type(tmp_path: Path) -> None:
    config = RouterConfig.load(
        write(
            tmp_path,
            "providers: [{id: g, type: groq, models: [{id: llama-3.1-8b-instant, tasks: [chat_small]}]}]",
        ),
        environ={},
    )
    assert config.providers[0].type == "groq"


def test_breaker_window_must_hold_minimum_calls(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        MINIMAL + "circuit_breaker: {window_size: 5, minimum_calls: 10}\n",
    )
    assert errors == [
        "circuit_breaker.minimum_calls: must not exceed window_size (10 > 5); "
        "the failure rate could never be evaluated"
    ]


def test_no_providers_is_an_error(tmp_path: Path) -> None:
    assert errors_of(tmp_path, "providers: []\n") == ["providers: must list at least 1 item"]
    assert errors_of(tmp_path, "server: {}\n") == ["providers: required field is missing"]


def test_secret_values_are_never_echoed(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        """
        providers:
          - {id: a, type: openai, api_key: [sk-very-secret], models: [{id: m, tasks: [chat_small]}]}
        """,
    )
    assert errors == ["providers[0].api_key: expected a string, got <hidden>"]
    assert "sk-very-secret" not in str(errors)


# -- YAML and variables ------------------------------------------------------------------------


def test_yaml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, "providers:\n  - id: a\n    type: [openai\n")
    assert len(errors) == 1
    assert errors[0].startswith("YAML syntax error at line 4, column 1:")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    assert errors_of(tmp_path, "- a\n- b\n") == ["<root>: expected a mapping of sections, got a list"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        RouterConfig.load(tmp_path / "nope.yaml", environ={})
    assert caught.value.errors == [f"{tmp_path / 'nope.yaml'}: file not found"]


def test_variables_expand_with_and_without_defaults(tmp_path: Path) -> None:
    text = """
        server:
          host: ${HOST}
          port: ${PORT:-6000}
        auth: {allow_unauthenticated_non_loopback: true}
        providers:
          - id: a
            type: ollama
            base_url: http://${OLLAMA_HOST:-localhost}:${OLLAMA_PORT:-11434}/
            api_key: ${EMPTY_KEY:-}
            models: [{id: "model-$${literal}", tasks: [chat_small]}]
    """
    # An empty variable takes the default too, as in the shell (a blank Kubernetes Secret key).
    environ = {"HOST": "0.0.0.0", "OLLAMA_PORT": "9999", "PORT": ""}
    config = RouterConfig.load(write(tmp_path, text), environ=environ)
    assert config.server.host == "0.0.0.0"
    assert config.server.port == 6000
    assert config.providers[0].base_url == "http://localhost:9999"
    assert config.providers[0].api_key is None
    assert config.providers[0].models[0].id == "model-${literal}"


def test_missing_variable_names_the_path_and_other_errors_still_show(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        """
        providers:
          - id: a
            type: openai
            priority: 500
            api_key: ${OPENAI_API_KEY}
            models: [{id: m, tasks: [chat_small]}]
        """,
    )
    assert errors == [
        "providers[0].api_key: environment variable OPENAI_API_KEY is not set "
        "(write ${OPENAI_API_KEY:-default} to give a default)",
        "providers[0].priority: must be less than or equal to 100 (got 500)",
    ]


def test_environment_overrides_nested_values_and_list_items(tmp_path: Path) -> None:
    text = (
        MINIMAL
        + """
  - id: second
    type: anthropic
    api_key: "0123"
    models: [{id: claude-haiku-4-5, tasks: [chat_small]}]
"""
    )
    environ = {
        "SEKHA_ROUTER__CIRCUIT_BREAKER__FAILURE_THRESHOLD": "3",
        "SEKHA_ROUTER__SERVER__REFLECTION": "true",
        "SEKHA_ROUTER__SERVER__METRICS_PORT": "9464",
        "SEKHA_ROUTER__PROVIDERS__0__ENABLED": "false",
        "SEKHA_ROUTER__PROVIDERS__1__PRIORITY": "7",
        "SEKHA_ROUTER__PROVIDERS__1__API_KEY": "0456",
        "SEKHA_ROUTER__PROVIDERS__1__MODELS__0__CAPABILITIES": "[vision]",  # not a scalar: kept as text
        "UNRELATED": "x",
    }
    with pytest.raises(ConfigError) as caught:
        RouterConfig.load(write(tmp_path, text), environ=environ)
    # A list value is not a scalar: it stays a string, and validation says so at the right path.
    assert caught.value.errors == ["providers[1].models[0].capabilities: expected a list, got '[vision]'"]
    del environ["SEKHA_ROUTER__PROVIDERS__1__MODELS__0__CAPABILITIES"]
    config = RouterConfig.load(write(tmp_path, text), environ=environ)
    assert config.circuit_breaker.failure_threshold == 3
    assert config.server.reflection is True
    assert config.server.metrics_port == 9464
    assert config.providers[0].enabled is False
    assert config.providers[1].priority == 7
    assert config.providers[1].api_key is not None
    assert config.providers[1].api_key.get_secret_value() == "0456"  # a string field stays a string


def test_environment_override_of_a_missing_list_item(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, MINIMAL, environ={"SEKHA_ROUTER__PROVIDERS__4__ENABLED": "false"})
    assert errors == [
        "SEKHA_ROUTER__PROVIDERS__4__ENABLED: providers[4] does not exist (providers has 1 entries)"
    ]


def test_environment_override_of_an_unknown_key_is_caught(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, MINIMAL, environ={"SEKHA_ROUTER__SERVER__PROT": "1"})
    assert errors == ["server.prot: unknown field (did you mean 'port'?)"]


def test_environment_override_creates_missing_sections(tmp_path: Path) -> None:
    config = RouterConfig.load(write(tmp_path, MINIMAL), environ={"SEKHA_ROUTER__RETRY__MAX_ATTEMPTS": "5"})
    assert config.retry.max_attempts == 5


def test_capabilities_parse_into_the_enum(tmp_path: Path) -> None:
    config = RouterConfig.load(
        write(
            tmp_path,
            "providers: [{id: a, type: openai, models: [{id: m, tasks: [vision], capabilities: [vision]}]}]",
        ),
        environ={},
    )
    assert config.providers[0].models[0].capabilities == [Capability.VISION]


# -- check-config --------------------------------------------------------------------------------


def test_check_config_prints_every_problem_and_fails(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        providers:
          - {id: a, type: openai, priority: 101, models: [{id: m, tasks: [chat_fancy]}]}
        """,
    )
    out, err = io.StringIO(), io.StringIO()
    code = check_config_main(path, environ={}, out=out, err=err)
    assert code != 0
    report = err.getvalue()
    assert f"{path}: 2 problems" in report
    assert "providers[0].priority: must be less than or equal to 100 (got 101)" in report
    assert "providers[0].models[0].tasks[0]: 'chat_fancy' is not one of" in report
    assert out.getvalue() == ""


def test_check_config_summarises_a_valid_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("sk-abc", "sk-should-not-print"))
    out, err = io.StringIO(), io.StringIO()
    source = StaticModelInfo({})
    assert check_config_main(path, environ={}, out=out, err=err, model_info=source) == 0
    text = out.getvalue()
    assert "OK, 1 provider(s), 1 model(s)" in text
    assert "openai/gpt-4o-mini" in text
    assert "price unknown" in text  # the static source knows no price
    assert "sk-should-not-print" not in text
    assert err.getvalue() == ""


# ------------------------------------------------------------------- auth beyond loopback

_OLLAMA = (
    '[{id: a, type: ollama, base_url: "http://127.0.0.1:11434", models: [{id: m, tasks: [chat_small]}]}]'
)


def _listening(host: str, auth: str = "", **server: str) -> str:
    extra = "".join(f", {key}: {value}" for key, value in server.items())
    lines = [f'server: {{host: "{host}"{extra}}}', f"providers: {_OLLAMA}"]
    if auth:
        lines.append(f"auth: {auth}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.1.2.3", "router.internal"])
def test_auth_off_beyond_loopback_is_refused_unless_allowed_explicitly(tmp_path: Path, host: str) -> None:
    with pytest.raises(ConfigError) as refused:
        RouterConfig.load(write(tmp_path, _listening(host)), environ={})
    [line] = refused.value.errors
    assert "auth.enabled" in line and "allow_unauthenticated_non_loopback" in line
    with pytest.raises(ConfigError):  # the embedding service follows the same rule
        EmbeddingConfig.load(write(tmp_path, f'server: {{host: "{host}"}}\n', "e.yaml"), environ={})

    allowed = _listening(host, "{allow_unauthenticated_non_loopback: true}")
    assert RouterConfig.load(write(tmp_path, allowed), environ={}).server.host == host
    keyed = _listening(host, f"{{enabled: true, keys: [{{id: k, hash: '{hash_api_key('k' * 32)}'}}]}}")
    assert RouterConfig.load(write(tmp_path, keyed), environ={}).auth.enabled


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_auth_off_on_loopback_needs_nothing(tmp_path: Path, host: str) -> None:
    assert RouterConfig.load(write(tmp_path, _listening(host)), environ={}).server.host == host


def test_the_http_door_on_another_address_counts_too(tmp_path: Path) -> None:
    text = _listening("127.0.0.1", http_port="8080", http_host="0.0.0.0")
    with pytest.raises(ConfigError) as refused:
        RouterConfig.load(write(tmp_path, text), environ={})
    assert "0.0.0.0" in refused.value.errors[0]
