"""Kubernetes manifests: each overlay renders with kustomize and holds what a deployment relies on.

Every rendered resource is validated offline against the Kubernetes OpenAPI schemas
(`kubernetes-validate`, strict: unknown fields are errors) for the oldest and newest cluster
versions we support, then the properties that matter are asserted: native gRPC probes, ports
named `grpc`, the headless Service for client-side balancing, locked-down containers,
resources on every container, the autoscaler's target, the prod overlay's replicas and
Redis wiring (routers and embedding replicas), and the dev overlay's one-pod embedding service.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from embedding_service.config import EmbeddingConfig
from router_service.config import RouterConfig
from sekha.keys import hash_api_key

REPO_ROOT = Path(__file__).resolve().parents[2]
KUBERNETES_DIR = REPO_ROOT / "deploy" / "kubernetes"
OVERLAYS = ("dev", "prod")
# Native gRPC probes are GA since 1.27 and the preStop `sleep` action exists since 1.29.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "Job"})
SERVICE_PORTS = {"router": 50051, "embedding": 50052}

Resource = dict[str, Any]


def render(overlay: str) -> list[Resource]:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "kubectl is required to render the kustomize overlays"
    result = subprocess.run(
        [kubectl, "kustomize", str(KUBERNETES_DIR / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"kustomize failed for {overlay}:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Resource]]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


def find(resources: list[Resource], kind: str, name: str) -> Resource:
    matches = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def pod_spec(workload: Resource) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def all_containers(resources: list[Resource]) -> Iterator[tuple[str, dict[str, Any]]]:
    for resource in resources:
        if resource["kind"] in WORKLOAD_KINDS:
            spec = pod_spec(resource)
            for container in spec.get("initContainers", []) + spec["containers"]:
                yield f"{resource['kind']}/{resource['metadata']['name']}/{container['name']}", container


def mounted_config(resources: list[Resource], workload: Resource, key: str) -> dict[str, Any]:
    """The service config file a workload mounts from its `config` ConfigMap volume, parsed."""
    volume = next(v for v in pod_spec(workload)["volumes"] if v["name"] == "config")
    config_map = find(resources, "ConfigMap", volume["configMap"]["name"])
    parsed: dict[str, Any] = yaml.safe_load(config_map["data"][key])
    return parsed


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_resource_matches_the_kubernetes_schema(
    rendered: dict[str, list[Resource]], overlay: str, version: str
) -> None:
    problems = []
    for resource in rendered[overlay]:
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = "/".join(str(p) for p in error.path)
            problems.append(f"{resource['kind']}/{resource['metadata']['name']} at {path}: {error.message}")
    assert not problems, "\n".join(problems)


def test_schema_validation_rejects_a_misspelt_field(rendered: dict[str, list[Resource]]) -> None:
    """Strict validation must catch a typo, or the test above proves nothing."""
    deployment = copy.deepcopy(find(rendered["prod"], "Deployment", "router"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["prot"] = 50051
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize(("name", "kind"), [("router", "Deployment"), ("embedding", "StatefulSet")])
def test_services_have_native_grpc_probes_on_a_port_named_grpc(
    rendered: dict[str, list[Resource]], overlay: str, name: str, kind: str
) -> None:
    container = next(
        c for c in pod_spec(find(rendered[overlay], kind, name))["containers"] if c["name"] == name
    )
    port = SERVICE_PORTS[name]
    assert {"name": "grpc", "containerPort": port, "protocol": "TCP"} in container["ports"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe].get("grpc") == {"port": port}, f"{probe} of {name} is not a gRPC probe"
    service = find(rendered[overlay], "Service", name)
    assert any(p["name"] == "grpc" and p["port"] == port for p in service["spec"]["ports"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_router_has_a_headless_service_for_client_side_balancing(
    rendered: dict[str, list[Resource]], overlay: str
) -> None:
    headless = find(rendered[overlay], "Service", "router-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert (
        headless["spec"]["selector"]
        == find(rendered[overlay], "Deployment", "router")["spec"]["selector"]["matchLabels"]
    )
    assert [p["name"] for p in headless["spec"]["ports"]] == ["grpc"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_locked_down(rendered: dict[str, list[Resource]], overlay: str) -> None:
    problems = []
    for where, container in all_containers(rendered[overlay]):
        context = container.get("securityContext", {})
        expected = {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        problems += [
            f"{where}: {key} is {context.get(key)!r}"
            for key, want in expected.items()
            if context.get(key) != want
        ]
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        if "/tmp" not in mounts:
            problems.append(f"{where}: no writable /tmp on a read-only root filesystem")
    for resource in rendered[overlay]:
        if resource["kind"] in WORKLOAD_KINDS:
            spec = pod_spec(resource)
            if spec.get("automountServiceAccountToken") is not False:
                problems.append(f"{resource['metadata']['name']}: service account token is mounted")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_and_limits(rendered: dict[str, list[Resource]], overlay: str) -> None:
    problems = []
    for where, container in all_containers(rendered[overlay]):
        resources = container.get("resources", {})
        for bound in ("requests", "limits"):
            missing = {"cpu", "memory"} - set(resources.get(bound, {}))
            if missing:
                problems.append(f"{where}: {bound} lack {sorted(missing)}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_router_config_and_keys_are_mounted_from_generated_objects(
    rendered: dict[str, list[Resource]], overlay: str
) -> None:
    resources = rendered[overlay]
    spec = pod_spec(find(resources, "Deployment", "router"))
    config_volume = next(v for v in spec["volumes"] if v["name"] == "config")
    config_map = find(resources, "ConfigMap", config_volume["configMap"]["name"])
    assert set(config_map["data"]) == {"router.yaml"}
    assert spec["containers"][0]["args"] == ["--config", "/etc/sekha/router.yaml"]
    secret_name = spec["containers"][0]["envFrom"][0]["secretRef"]["name"]
    secret = find(resources, "Secret", secret_name)
    assert set(secret["data"]) >= {"OPENAI_API_KEY", "ANTHROPIC_API_KEY"}
    assert all(value == "" for value in secret["data"].values()), "a real key was committed"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_holds_a_value(rendered: dict[str, list[Resource]], overlay: str) -> None:
    secrets = [r for r in rendered[overlay] if r["kind"] == "Secret"]
    assert {s["metadata"]["name"].rsplit("-", 1)[0] for s in secrets} >= {
        "provider-keys",
        "router-api-keys",
        "embedding-api-keys",
    }
    for secret in secrets:
        assert all(value == "" for value in secret.get("data", {}).values()), secret["metadata"]["name"]


@pytest.mark.parametrize(
    ("kind", "name", "key", "config_type"),
    [
        ("Deployment", "router", "router.yaml", RouterConfig),
        ("StatefulSet", "embedding", "embedding.yaml", EmbeddingConfig),
    ],
)
def test_prod_services_require_api_keys_from_their_secrets(
    rendered: dict[str, list[Resource]], tmp_path: Path, kind: str, name: str, key: str, config_type: Any
) -> None:
    resources = rendered["prod"]
    workload = find(resources, kind, name)
    container = pod_spec(workload)["containers"][0]
    secrets = [find(resources, "Secret", ref["secretRef"]["name"]) for ref in container.get("envFrom", [])]
    from_secrets = {variable for secret in secrets for variable in secret["data"]}
    provided = from_secrets | set(env_of(container))
    volume = next(v for v in pod_spec(workload)["volumes"] if v["name"] == "config")
    text = find(resources, "ConfigMap", volume["configMap"]["name"])["data"][key]
    referenced = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    assert referenced <= provided, f"{name} reads variables nothing provides: {referenced - provided}"

    # What an operator puts in the Secrets: key hashes, and the embedding service's own key.
    environ = env_of(container) | {
        v: hash_api_key(v) if v.endswith("_HASH") else f"value-of-{v}" for v in from_secrets
    }
    path = tmp_path / key
    path.write_text(text)
    config = config_type.load(path, environ=environ)
    assert config.auth.enabled
    assert {k.hash for k in config.auth.keys} <= {hash_api_key(v) for v in from_secrets}
    if name == "router":
        assert [k.id for k in config.auth.keys if k.admin] == ["ops"]
        assert "embedding-service" in {k.id for k in config.auth.keys}
    else:
        assert config.router.api_key.get_secret_value() == "value-of-SEKHA_EMBEDDING_ROUTER_KEY"

    # Secrets left empty: auth stays on and no key at all is accepted.
    unset = config_type.load(path, environ=env_of(container) | {v: "" for v in from_secrets})
    assert unset.auth.enabled
    assert {k.hash for k in unset.auth.keys} == {"sha256:" + "0" * 64}


def test_prod_runs_three_autoscaled_routers_sharing_state_in_redis(
    rendered: dict[str, list[Resource]],
) -> None:
    resources = rendered["prod"]
    router = find(resources, "Deployment", "router")
    assert router["spec"]["replicas"] == 3
    env = env_of(pod_spec(router)["containers"][0])
    assert env["SEKHA_ROUTER__STATE__BACKEND"] == "redis"
    assert env["SEKHA_ROUTER__STATE__REDIS_URL"] == "redis://redis:6379/0"
    redis_service = find(resources, "Service", "redis")
    assert redis_service["spec"]["ports"][0]["port"] == 6379

    hpa = find(resources, "HorizontalPodAutoscaler", "router")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "router"}
    assert hpa["spec"]["minReplicas"] == 3
    assert hpa["spec"]["maxReplicas"] > 3

    pdb = find(resources, "PodDisruptionBudget", "router")
    assert pdb["spec"]["selector"] == router["spec"]["selector"]


def test_prod_runs_two_embedding_replicas_on_the_chroma_server_sharing_state_in_redis(
    rendered: dict[str, list[Resource]], tmp_path: Path
) -> None:
    resources = rendered["prod"]
    embedding = find(resources, "StatefulSet", "embedding")
    assert embedding["spec"]["replicas"] == 2
    assert "volumeClaimTemplates" not in embedding["spec"], "the replicas keep no state of their own"

    config = mounted_config(resources, embedding, "embedding.yaml")
    assert config["chroma"]["mode"] == "http"
    chroma_service = find(resources, "Service", config["chroma"]["host"])
    assert chroma_service["spec"]["ports"][0]["port"] == config["chroma"]["port"]
    chroma = find(resources, "StatefulSet", "chroma")
    chroma_mounts = {m["name"] for m in pod_spec(chroma)["containers"][0]["volumeMounts"]}
    chroma_claims = {t["metadata"]["name"] for t in chroma["spec"]["volumeClaimTemplates"]}
    assert chroma_claims & chroma_mounts, "the Chroma server's data is not on a PersistentVolumeClaim"

    # The registry, migrations and leases are shared through the Redis the routers use.
    path = tmp_path / "embedding.yaml"
    path.write_text(yaml.safe_dump(config))
    state = EmbeddingConfig.load(path, environ={}).state
    assert state.backend == "redis" and state.redis_url is not None
    host_port = state.redis_url.get_secret_value().removeprefix("redis://").split("/", 1)[0]
    redis_service = find(resources, "Service", host_port.split(":")[0])
    assert redis_service["spec"]["ports"][0]["port"] == int(host_port.split(":")[1])
    router_env = env_of(pod_spec(find(resources, "Deployment", "router"))["containers"][0])
    assert router_env["SEKHA_ROUTER__STATE__REDIS_URL"].startswith(f"redis://{host_port}/")
    redis_args = pod_spec(find(resources, "StatefulSet", "redis"))["containers"][0]["args"]
    assert redis_args[redis_args.index("--appendonly") + 1] == "yes", "the shared registry must persist"

    pdb = find(resources, "PodDisruptionBudget", "embedding")
    assert pdb["spec"]["selector"] == embedding["spec"]["selector"]
    assert pdb["spec"]["maxUnavailable"] == 1  # a drain or a rolling update leaves one replica serving


def test_dev_is_one_router_with_the_local_config_and_embedded_chroma(
    rendered: dict[str, list[Resource]],
) -> None:
    resources = rendered["dev"]
    router = find(resources, "Deployment", "router")
    assert router["spec"]["replicas"] == 1
    assert not [r for r in resources if r["kind"] == "HorizontalPodAutoscaler"]
    assert not [r for r in resources if r["metadata"]["name"] in {"chroma", "redis"}]

    router_config = mounted_config(resources, router, "router.yaml")
    provider_types = {p["type"] for p in router_config["providers"]}
    assert provider_types <= {"ollama", "local"}, f"dev must stay local, found {provider_types}"
    assert find(resources, "Service", "ollama")

    embedding = find(resources, "StatefulSet", "embedding")
    assert embedding["spec"]["replicas"] == 1, "embedded Chroma and SQLite belong to one process"
    embedding_config = mounted_config(resources, embedding, "embedding.yaml")
    assert embedding_config["chroma"]["mode"] == "persistent"
    assert embedding_config.get("state", {}).get("backend", "sqlite") == "sqlite"
    claims = {t["metadata"]["name"] for t in embedding["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in pod_spec(embedding)["containers"][0]["volumeMounts"]}
    for stored in (embedding_config["chroma"]["path"], embedding_config["state_path"]):
        mount = next(path for path in mounts if Path(stored).is_relative_to(path))
        assert mounts[mount] in claims, f"{stored} is not on the PVC"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_lives_in_the_overlay_namespace(
    rendered: dict[str, list[Resource]], overlay: str
) -> None:
    resources = rendered[overlay]
    namespace = find(resources, "Namespace", f"sekha-{overlay}" if overlay == "dev" else "sekha")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    name = namespace["metadata"]["name"]
    assert all(r["metadata"].get("namespace") == name for r in resources if r["kind"] != "Namespace")


@pytest.mark.parametrize(
    "path", sorted(KUBERNETES_DIR.rglob("config/*.yaml")), ids=lambda p: str(p.relative_to(KUBERNETES_DIR))
)
def test_service_configs_load_and_listen_on_every_interface(path: Path) -> None:
    environ = {"OPENAI_API_KEY": "sk-placeholder", "ANTHROPIC_API_KEY": "placeholder"}
    if path.name.startswith("router."):
        router = RouterConfig.load(path, environ=environ)
        assert (router.server.host, router.server.port, router.server.metrics_port) == (
            "0.0.0.0",
            50051,
            9464,
        )
    else:
        assert path.name.startswith("embedding."), f"{path.name}: neither a router nor an embedding config"
        embedding = EmbeddingConfig.load(path, environ=environ)
        assert (embedding.server.host, embedding.server.port, embedding.server.metrics_port) == (
            "0.0.0.0",
            50052,
            9465,
        )
        assert embedding.state_path.is_relative_to("/var/lib/sekha")
