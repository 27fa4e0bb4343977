"""Docker Compose stack, images and observability configs, checked offline.

The compose file is validated against the Compose Specification schema vendored in
deploy/compose/schema/ (see the README there); each scenario profile must start exactly
its router variant. The Dockerfiles are read for the properties the images promise
(non-root, no compilers at run time, a gRPC health check), and the health check script is
run against a real gRPC health server. Every metric the Grafana dashboard and the alert
rules use must be one the services export (deploy/metrics.txt), and Prometheus must scrape
both services' metrics ports.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from embedding_service.config import EmbeddingConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
COMPOSE_SCHEMA = COMPOSE_DIR / "schema" / "compose-spec.json"
PROFILES = ("local", "hybrid", "cloud")
ROUTER_DOCKERFILE = "deploy/docker/router.Dockerfile"
EMBEDDING_DOCKERFILE = "deploy/docker/embedding.Dockerfile"
HEALTHCHECK_SCRIPT = DEPLOY / "docker" / "healthcheck.py"
ROUTER_METRICS_PORT = 9464
EMBEDDING_METRICS_PORT = 9465
# Series Prometheus makes itself rather than scraping them from the services.
PROMETHEUS_BUILTIN_SERIES = frozenset({"up"})

Compose = dict[str, Any]


@pytest.fixture(scope="module")
def compose() -> Compose:
    # safe_load resolves the anchors and `<<` merge keys the way Compose does.
    loaded: Compose = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return loaded


def enabled_services(compose: Compose, profile: str) -> dict[str, dict[str, Any]]:
    """Services `docker compose --profile <profile> up` starts: no profiles, or this one."""
    return {
        name: service
        for name, service in compose["services"].items()
        if not service.get("profiles") or profile in service["profiles"]
    }


def router_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in services.items()
        if service.get("build", {}).get("dockerfile") == ROUTER_DOCKERFILE
    }


def embedding_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in services.items()
        if service.get("build", {}).get("dockerfile") == EMBEDDING_DOCKERFILE
    }


# --- compose file -------------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification(compose: Compose) -> None:
    validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8")))
    problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not problems, "\n".join(problems)

    misspelt = json.loads(json.dumps(compose))
    misspelt["services"]["redis"]["helthcheck"] = misspelt["services"]["redis"].pop("healthcheck")
    assert not validator.is_valid(misspelt), "the schema does not catch a misspelt service key"


@pytest.mark.parametrize("profile", PROFILES)
def test_each_profile_starts_exactly_its_router_variant(compose: Compose, profile: str) -> None:
    services = enabled_services(compose, profile)
    routers = router_services(services)
    assert len(routers) == 1, f"profile {profile} starts routers {sorted(routers)}"
    (router,) = routers.values()
    assert router["command"] == ["--config", f"/etc/sekha/router.{profile}.yaml"]
    assert "../config:/etc/sekha:ro" in router["volumes"]
    assert (DEPLOY / "config" / f"router.{profile}.yaml").is_file()
    # Clients and the embedding service reach whichever variant runs by the same name.
    assert router["networks"]["default"]["aliases"] == ["router"]
    assert {"chroma", "redis", "prometheus", "grafana", "otel-collector"} <= set(services)
    assert ("ollama" in services) == (profile == "local")
    # One embedding variant per profile, also reached by one name whichever it is.
    embeddings = embedding_services(services)
    assert len(embeddings) == 1, f"profile {profile} starts embedding services {sorted(embeddings)}"
    (embedding,) = embeddings.values()
    assert embedding["networks"]["default"]["aliases"] == ["embedding"]
    assert embedding["command"] == ["--config", "/etc/sekha/embedding.compose.yaml"]


def test_cloud_profile_runs_two_embedding_replicas_sharing_state_in_redis(compose: Compose) -> None:
    (name, cloud), *others = embedding_services(enabled_services(compose, "cloud")).items()
    assert not others
    assert cloud["deploy"]["replicas"] == 2
    assert cloud["environment"]["SEKHA_EMBEDDING__STATE__BACKEND"] == "redis"
    assert cloud["environment"]["SEKHA_EMBEDDING__STATE__REDIS_URL"] == "redis://redis:6379/0"
    assert cloud["depends_on"]["redis"]["condition"] == "service_healthy"
    assert cloud["depends_on"]["chroma"]["condition"] == "service_healthy"
    # Nothing of its own on a volume (two containers must not share a SQLite file) ...
    assert not [v for v in cloud["volumes"] if not v.startswith(".")], f"{name} mounts a state volume"
    # ... and one host port per replica.
    (published,) = cloud["ports"]
    first, last = re.match(
        r"127\.0\.0\.1:\$\{EMBEDDING_PORT:-(\d+)\}-\$\{EMBEDDING_PORT_LAST:-(\d+)\}:50052", published
    ).groups()
    assert int(last) - int(first) + 1 == cloud["deploy"]["replicas"]
    redis_command = compose["services"]["redis"]["command"]
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes", "the shared registry must persist"
    config = EmbeddingConfig.load(
        DEPLOY / "config" / "embedding.compose.yaml",
        environ={k: v for k, v in cloud["environment"].items() if k.startswith("SEKHA_EMBEDDING__")},
    )
    assert config.state.backend == "redis" and config.chroma.mode == "http"


def test_every_router_variant_shares_the_redis_state_and_metrics_settings(compose: Compose) -> None:
    routers = router_services(compose["services"])
    assert len(routers) == len(PROFILES)
    for name, router in routers.items():
        assert router["environment"]["SEKHA_ROUTER__STATE__BACKEND"] == "redis", name
        assert router["environment"]["SEKHA_ROUTER__STATE__REDIS_URL"] == "redis://redis:6379/0", name
        assert router["depends_on"]["redis"]["condition"] == "service_healthy", name


@pytest.mark.parametrize("profile", PROFILES)
def test_dependencies_of_enabled_services_are_enabled_or_optional(compose: Compose, profile: str) -> None:
    services = enabled_services(compose, profile)
    problems = []
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        for dependency in depends_on:
            spec = depends_on[dependency] if isinstance(depends_on, dict) else {}
            if dependency not in services and spec.get("required", True):
                problems.append(f"{name} requires {dependency}, which profile {profile} does not start")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("service", "port"), [("router-cloud", 50051), ("embedding", 50052), ("embedding-cloud", 50052)]
)
def test_services_are_health_checked_over_grpc(compose: Compose, service: str, port: int) -> None:
    healthcheck = compose["services"][service]["healthcheck"]
    assert healthcheck["test"] == ["CMD", "python", "/opt/sekha/healthcheck.py", f"127.0.0.1:{port}"]


def test_secrets_come_from_the_environment_never_from_the_file(compose: Compose) -> None:
    secret_name = re.compile(r"KEY|SECRET|TOKEN|PASSWORD", re.IGNORECASE)
    interpolation = re.compile(r"^\$\{[A-Z0-9_]+(:?[-?][^}]*)?\}$")
    problems = []
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if secret_name.search(key) and not interpolation.match(str(value)):
                problems.append(f"{name}: {key} has a literal value")
        for env_file in service.get("env_file", []):
            # Optional, so a clone without keys still starts (providers then answer 401).
            assert env_file["required"] is False, f"{name}: env_file {env_file['path']} is required"
            assert (COMPOSE_DIR / f"{env_file['path']}.example").is_file(), f"{name}: no example for it"
    assert not problems, "\n".join(problems)
    for example in COMPOSE_DIR.glob("*.example"):
        assigned = [line.split("=", 1) for line in example.read_text().splitlines() if "=" in line]
        leaked = [key for key, value in assigned if secret_name.search(key) and value.strip()]
        assert not leaked, f"{example.name} holds values for {leaked}"


def test_bind_mounted_host_files_exist(compose: Compose) -> None:
    missing = []
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                if not (COMPOSE_DIR / source).exists():
                    missing.append(f"{name}: {source}")
    assert not missing, "\n".join(missing)


def test_compose_embedding_config_is_valid_and_points_at_the_stack() -> None:
    config = EmbeddingConfig.load(DEPLOY / "config" / "embedding.compose.yaml", environ={})
    assert config.server.host == "0.0.0.0"
    assert config.server.metrics_port == EMBEDDING_METRICS_PORT
    assert config.router.target == "router:50051"
    assert (config.chroma.mode, config.chroma.host, config.chroma.port) == ("http", "chroma", 8000)
    assert config.state_path.is_relative_to("/var/lib/sekha")


# --- images -------------------------------------------------------------------------------


def dockerfile_stages(path: Path) -> list[list[str]]:
    """Instructions per build stage, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        if (pending + line).strip():
            logical.append((pending + line).strip())
        pending = ""
    stages: list[list[str]] = []
    for instruction in logical:
        if instruction.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


@pytest.mark.parametrize(
    ("dockerfile", "ports", "entrypoint"),
    [
        # The router also exposes the OpenAI-compatible HTTP door (8080).
        ("router.Dockerfile", f"50051 8080 {ROUTER_METRICS_PORT}", "sekha-router"),
        ("embedding.Dockerfile", f"50052 {EMBEDDING_METRICS_PORT}", "sekha-embedding"),
    ],
)
def test_images_are_multi_stage_non_root_and_health_checked(
    dockerfile: str, ports: str, entrypoint: str
) -> None:
    stages = dockerfile_stages(DEPLOY / "docker" / dockerfile)
    assert len(stages) >= 2, "the image is not multi-stage"
    build, runtime = stages[0], stages[-1]
    assert any("build-essential" in i for i in build)
    assert not any(re.search(r"build-essential|gcc|g\+\+|clang", i) for i in runtime), (
        "compilers in the runtime stage"
    )
    assert "USER 10001:10001" in runtime
    assert any(i.startswith("COPY --from=") and "/opt/venv" in i for i in runtime)
    assert not any(i.startswith("COPY") and " . " in f" {i} " for i in runtime), (
        "the runtime stage copies the source tree"
    )
    assert f"EXPOSE {ports}" in runtime
    assert f'ENTRYPOINT ["{entrypoint}"]' in runtime
    healthcheck = next(i for i in runtime if i.startswith("HEALTHCHECK"))
    assert '"python", "/opt/sekha/healthcheck.py"' in healthcheck
    assert any(f"SEKHA_HEALTHCHECK_TARGET=127.0.0.1:{ports.split()[0]}" in i for i in runtime)


def test_dockerignore_keeps_every_copied_path_in_the_context() -> None:
    """Every COPY source must survive the root .dockerignore (an allow-list)."""
    allowed = [
        line[1:].rstrip("/")
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    for dockerfile in (DEPLOY / "docker").glob("*.Dockerfile"):
        for stage in dockerfile_stages(dockerfile):
            for instruction in stage:
                if instruction.startswith("COPY ") and "--from=" not in instruction:
                    for source in instruction.split()[1:-1]:
                        source = source.rstrip("/")
                        assert (REPO_ROOT / source).exists(), f"{dockerfile.name}: {source} does not exist"
                        assert any(source == a or source.startswith(a + "/") for a in allowed), (
                            f"{dockerfile.name}: {source} is excluded by .dockerignore"
                        )


@pytest.fixture
def health_server() -> Iterator[tuple[str, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(grace=None)


def run_healthcheck(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK_SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.subprocess
def test_healthcheck_passes_only_while_the_server_is_serving(
    health_server: tuple[str, health.HealthServicer],
) -> None:
    target, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    serving = run_healthcheck(target)
    assert serving.returncode == 0, serving.stderr
    assert serving.stdout.strip() == f"{target}: SERVING"

    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    draining = run_healthcheck(target)
    assert draining.returncode == 1
    assert draining.stderr.strip() == f"{target}: NOT_SERVING"

    unknown_service = run_healthcheck(target, "--service", "sekha.router.v1.RouterService")
    assert unknown_service.returncode == 1
    assert "NOT_FOUND" in unknown_service.stderr


@pytest.mark.subprocess
def test_healthcheck_fails_when_nothing_listens() -> None:
    # Bind and release a port so that nothing listens on it during the check.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_healthcheck(f"127.0.0.1:{port}", "--timeout", "2")
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr or "DEADLINE_EXCEEDED" in result.stderr


# --- metrics, dashboard, alerts -----------------------------------------------------------

_PROMQL_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_PROMQL_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_PROMQL_IDENTIFIER = re.compile(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*")
_PROMQL_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
)
_HISTOGRAM_SERIES_SUFFIX = re.compile(r"_(?:bucket|sum|count)$")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression reads, with histogram series suffixes removed.

    Strings, label matchers, range selectors, grouping label lists and Grafana variables are
    removed first; an identifier followed by `(` is a function, anything else left is a metric.
    """
    text = _PROMQL_STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _PROMQL_GROUPING.sub(" ", text)
    text = re.sub(r"\$\{\w+\}|\$\w+", " ", text)
    names = set()
    for match in _PROMQL_IDENTIFIER.finditer(text):
        identifier = match.group(0)
        if identifier in _PROMQL_KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue
        names.add(_HISTOGRAM_SERIES_SUFFIX.sub("", identifier))
    return names


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("up == 0", {"up"}),
        (
            'histogram_quantile(0.99, sum by (le) (rate(sekha_rpc_duration_seconds_bucket{code="OK"}[5m])))',
            {"sekha_rpc_duration_seconds"},
        ),
        (
            "sum(rate(a_total[$__rate_interval])) / sum without (x) (rate(b_count[1h] offset 5m)) * 3600",
            {"a_total", "b"},
        ),
        (
            'max by (provider) (sekha_router_breaker_state{provider=~"open|x"}) == bool 2',
            {"sekha_router_breaker_state"},
        ),
        ('label_replace(m_sum, "dst", "$1", "src", "(.*)") > 1e3', {"m"}),
    ],
)
def test_promql_metric_names_finds_metrics_and_nothing_else(expr: str, expected: set[str]) -> None:
    assert promql_metric_names(expr) == expected


@pytest.fixture(scope="module")
def exported_metrics() -> set[str]:
    names = {line.strip() for line in (DEPLOY / "metrics.txt").read_text().splitlines() if line.strip()}
    assert len(names) == 14
    return names


def dashboard_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from dashboard_panels(panel.get("panels", []))


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DEPLOY / "grafana" / "dashboards" / "sekha.json").read_text())
    return loaded


@pytest.fixture(scope="module")
def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_dashboard_reads_only_exported_metrics_and_shows_every_one(
    dashboard: dict[str, Any], exported_metrics: set[str]
) -> None:
    used: set[str] = set()
    for panel in dashboard_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            used |= promql_metric_names(target["expr"])
    assert used - exported_metrics == set(), "the dashboard reads metrics nobody exports"
    assert exported_metrics - used == set(), "exported metrics missing from the dashboard"


def test_dashboard_queries_the_provisioned_prometheus(dashboard: dict[str, Any]) -> None:
    provisioned = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    )
    (datasource,) = provisioned["datasources"]
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "datasource")
    assert (variable["type"], variable["query"]) == ("datasource", datasource["type"])
    assert variable["current"]["value"] == datasource["uid"]
    for panel in dashboard_panels(dashboard["panels"]):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
    ids = [panel["id"] for panel in dashboard_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "panel ids repeat"

    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "sekha.yaml").read_text())
    grafana = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["grafana"]
    assert f"../grafana/dashboards:{provider['providers'][0]['options']['path']}:ro" in grafana["volumes"]


def test_alert_rules_read_only_exported_metrics(
    alert_rules: list[dict[str, Any]], exported_metrics: set[str]
) -> None:
    unknown = {
        rule["alert"]: names
        for rule in alert_rules
        if (names := promql_metric_names(rule["expr"]) - exported_metrics - PROMETHEUS_BUILTIN_SERIES)
    }
    assert not unknown, f"alerts read metrics nobody exports: {unknown}"


def test_alert_rules_are_complete(alert_rules: list[dict[str, Any]]) -> None:
    names = [rule["alert"] for rule in alert_rules]
    assert len(names) == len(set(names)), "alert names repeat"
    for rule in alert_rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule[
            "alert"
        ]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_prometheus_scrapes_both_services_and_loads_the_alerts(compose: Compose) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    scraped: dict[str, set[tuple[str, int]]] = {}
    for job in config["scrape_configs"]:
        targets = scraped.setdefault(job["job_name"], set())
        for sd in job.get("dns_sd_configs", []):
            targets |= {(name, sd["port"]) for name in sd["names"]}
        for static in job.get("static_configs", []):
            targets |= {(t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1])) for t in static["targets"]}
    assert ("router", ROUTER_METRICS_PORT) in scraped["sekha-router"]
    assert ("embedding", EMBEDDING_METRICS_PORT) in scraped["sekha-embedding"]
    # The `up{job=...}` alerts name these jobs.
    alert_text = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    assert 'job="sekha-router"' in alert_text and 'job="sekha-embedding"' in alert_text

    mounts = dict(
        v.rsplit(":", 2)[:2] for v in compose["services"]["prometheus"]["volumes"] if v.startswith(".")
    )
    assert config["rule_files"] == [mounts["../prometheus/alerts.yml"]]


def test_router_deploy_configs_export_metrics_on_the_scraped_port() -> None:
    configs = sorted((DEPLOY / "config").glob("router.*.yaml"))
    assert {path.name for path in configs} >= {f"router.{profile}.yaml" for profile in PROFILES}
    for path in configs:
        # `${VAR:-default}` as the loader reads it with VAR unset.
        text = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", path.read_text())
        server = yaml.safe_load(text).get("server", {})
        assert server.get("metrics_port") == ROUTER_METRICS_PORT, f"{path.name}: metrics_port"
        assert server.get("host") == "0.0.0.0", f"{path.name}: a container must listen on every interface"


def test_collector_pipelines_are_fully_defined() -> None:
    config = yaml.safe_load((DEPLOY / "otel" / "collector.yaml").read_text())
    assert config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
    for name, pipeline in config["service"]["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            undefined = set(pipeline[kind]) - set(config[kind])
            assert not undefined, f"pipeline {name} uses undefined {kind} {undefined}"
        assert pipeline["processors"][-1] == "batch", f"pipeline {name} must batch last"
        assert "memory_limiter" == pipeline["processors"][0], f"pipeline {name} must limit memory first"
    assert "debug" in config["exporters"]
