"""API key authentication and (mutual) TLS on both services, over real servers and channels.

Certificates come from a throwaway CA made per test module (`testkit.certs`); a second,
unrelated CA provides the "wrong" client certificate.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grpc
import pytest

from embedding_service.server import build_server as build_embedding_server
from router_service.server import build_server as build_router_server
from sekha import client as c
from sekha.embedding.v1 import embedding_service_pb2 as emb
from sekha.router.v1 import router_service_pb2 as rt
from sekha.router.v1 import router_service_pb2_grpc as rt_grpc
from sekha_runtime.configloader import ConfigError
from sekha_runtime.server.auth import (
    ANONYMOUS,
    ApiKeyAuth,
    KeyRing,
    auth_layers,
    current_caller,
)
from sekha_runtime.server.lifecycle import ServerOptions, start_server
from sekha_runtime.server.security import AuthConfig, hash_api_key
from testkit.certs import CertificateAuthority, IssuedCertificate
from testkit.fake_provider import FakeProvider
from testkit.harness import chat_model, embedding_config, embedding_model, openai_provider, router_config

ALICE_KEY = "sk-sekha-alice-0123456789abcdef"
EMBEDDER_KEY = "sk-sekha-embedding-service-fedcba9876543210"
ADMIN_KEY = "sk-sekha-finance-admin-00112233445566778899"
KEYS = [
    {"id": "alice", "hash": hash_api_key(ALICE_KEY)},
    {"id": "embedding-svc", "hash": hash_api_key(EMBEDDER_KEY)},
]


@dataclasses.dataclass(frozen=True)
class Pki:
    ca_file: Path
    server: IssuedCertificate
    client: IssuedCertificate
    stranger: IssuedCertificate  # a client certificate from another CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.create("sekha test CA")
    other = CertificateAuthority.create("somebody else's CA")
    return Pki(
        ca_file=ca.write(root / "ca.crt"),
        server=ca.issue("sekha server", root / "server"),
        client=ca.issue("sekha client", root / "client", client=True),
        stranger=other.issue("stranger", root / "stranger", client=True),
    )


@pytest.fixture
async def fake():  # type: ignore[no-untyped-def]
    async with FakeProvider() as provider:
        yield provider


def _router_config(fake: FakeProvider, **sections):  # type: ignore[no-untyped-def]
    return router_config(
        [
            openai_provider("p", fake.base_url, [chat_model("alpha"), embedding_model("vec-16", 16)]),
        ],
        **sections,
    )


def ask() -> rt.ChatRequest:
    return rt.ChatRequest(messages=[c.user("hello")], generation=rt.GenerationConfig(max_tokens=10))


# ------------------------------------------------------------------------------------------- auth


async def test_missing_or_wrong_key_is_unauthenticated_and_health_needs_none(fake: FakeProvider) -> None:
    app = await build_router_server(_router_config(fake, auth={"enabled": True, "keys": KEYS}))
    target = f"127.0.0.1:{app.port}"
    try:
        async with c.RouterClient(c.ConnectionConfig(target)) as anonymous:
            assert await anonymous.health() == "SERVING"
            with pytest.raises(c.UnauthenticatedError) as missing:
                await anonymous.chat(ask())
            with pytest.raises(c.UnauthenticatedError):
                await anonymous.list_models()
            with pytest.raises(c.UnauthenticatedError):  # server streaming is guarded too
                async for _ in anonymous.stream_chat(rt.StreamChatRequest(messages=[c.user("hi")])):
                    pass
        async with c.RouterClient(c.ConnectionConfig(target, api_key="sk-sekha-wrong")) as wrong:
            with pytest.raises(c.UnauthenticatedError) as bad:
                await wrong.chat(ask())
        async with c.RouterClient(c.ConnectionConfig(target, api_key=ALICE_KEY)) as alice:
            reply = await alice.chat(ask())
            assert reply.text == "echo: hello"
        # The x-api-key header works as well as `authorization: Bearer`.
        async with grpc.aio.insecure_channel(target) as channel:
            stub = rt_grpc.RouterServiceStub(channel)
            listed = await stub.ListModels(rt.ListModelsRequest(), metadata=(("x-api-key", EMBEDDER_KEY),))
            assert listed.models
            with pytest.raises(grpc.aio.AioRpcError) as basic:
                basic_auth = (("authorization", f"Basic {ALICE_KEY}"),)
                await stub.ListModels(rt.ListModelsRequest(), metadata=basic_auth)
            assert basic.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await app.stop(0)
    assert "sk-sekha" not in missing.value.message and "sk-sekha" not in bad.value.message
    assert fake.count("/v1/chat/completions") == 1  # only alice's call reached a provider


async def test_caller_identity_reaches_the_handler_and_refused_calls_never_run_it() -> None:
    seen: list[str] = []

    class Echo(rt_grpc.RouterServiceServicer):
        async def Route(self, request, context):  # type: ignore[no-untyped-def]
            seen.append(current_caller().key_id)
            return rt.RouteResponse(decision=rt.RoutingDecision(reason=current_caller().key_id))

    auth = ApiKeyAuth(KeyRing([(k["id"], k["hash"]) for k in KEYS]))
    serving = await start_server(
        ServerOptions(port=0, layers=(auth,)),
        "test.sekha.dev",
        lambda server: rt_grpc.add_RouterServiceServicer_to_server(Echo(), server),
        ["sekha.router.v1.RouterService"],
    )
    target = f"127.0.0.1:{serving.port}"
    try:
        async with (
            c.RouterClient(c.ConnectionConfig(target, api_key=ALICE_KEY)) as alice,
            c.RouterClient(c.ConnectionConfig(target, api_key=EMBEDDER_KEY)) as embedder,
            c.RouterClient(c.ConnectionConfig(target, api_key="nope")) as stranger,
        ):
            assert (await alice.route(rt.RouteRequest())).decision.reason == "alice"
            assert (await embedder.route(rt.RouteRequest())).decision.reason == "embedding-svc"
            assert (await alice.route(rt.RouteRequest())).decision.reason == "alice"
            with pytest.raises(c.UnauthenticatedError):
                await stranger.route(rt.RouteRequest())
    finally:
        await serving.stop(0)
    assert seen == ["alice", "embedding-svc", "alice"]
    assert auth.rejected == 1
    assert serving.errors.in_flight == 0
    assert current_caller() is ANONYMOUS  # nothing leaked into the test's own context


def test_auth_config_is_explicit_and_checked() -> None:
    assert auth_layers(AuthConfig()) == []  # off unless enabled
    with pytest.raises(ValueError, match="no keys"):
        AuthConfig(enabled=True)
    with pytest.raises(ValueError, match="sha256"):
        AuthConfig(enabled=True, keys=[{"id": "a", "hash": "sk-raw-key-pasted-by-mistake"}])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="duplicate"):
        AuthConfig(enabled=True, keys=[KEYS[0], {"id": "alice", "hash": KEYS[1]["hash"]}])  # type: ignore[list-item]
    assert hash_api_key("abc") == "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_production_example_turns_auth_on_and_reflection_off() -> None:
    from router_service.config import RouterConfig

    repo = Path(__file__).resolve().parents[2]
    config = RouterConfig.load(
        repo / "deploy/config/router.cloud.yaml",
        environ={
            "OPENAI_API_KEY": "x",
            "ANTHROPIC_API_KEY": "y",
            "SEKHA_ROUTER_API_KEY_HASH": hash_api_key("k"),
        },
    )
    assert config.auth.enabled and config.auth.keys[0].hash == hash_api_key("k")
    assert not config.server.reflection
    default = RouterConfig.load(None, environ={})
    assert not default.auth.enabled and default.server.host == "127.0.0.1"


async def test_spend_is_charged_to_the_key_and_only_admin_keys_read_other_callers(fake: FakeProvider) -> None:
    keys = [*KEYS, {"id": "finance", "hash": hash_api_key(ADMIN_KEY), "admin": True}]
    config = _router_config(fake, auth={"enabled": True, "keys": keys}, state={"backend": "memory"})
    app = await build_router_server(config)
    target = f"127.0.0.1:{app.port}"
    try:
        async with (
            c.RouterClient(c.ConnectionConfig(target, api_key=ALICE_KEY)) as alice,
            c.RouterClient(c.ConnectionConfig(target, api_key=EMBEDDER_KEY)) as other,
            c.RouterClient(c.ConnectionConfig(target, api_key=ADMIN_KEY)) as admin,
        ):
            spoofed = rt.ChatRequest(messages=[c.user("hello")], metadata={"tenant": "mallory"})
            await alice.chat(spoofed)
            await other.chat(rt.ChatRequest(messages=[c.user("hi")]))
            own = await alice.get_spend()  # no caller named: a plain key sees its own spend only
            named = await alice.get_spend(rt.GetSpendRequest(caller="alice"))
            with pytest.raises(c.PermissionDeniedError, match="caller: this API key may read only its own"):
                await alice.get_spend(rt.GetSpendRequest(caller="embedding-svc"))
            everyone = await admin.get_spend()
            framed = await admin.get_spend(rt.GetSpendRequest(caller="mallory"))
    finally:
        await app.stop(0)
    assert [(row.key, row.request_count) for row in own.rows] == [("alice", 1)]
    assert [(row.key, row.request_count) for row in named.rows] == [("alice", 1)]
    assert sorted((row.key, row.request_count) for row in everyone.rows) == [
        ("alice", 1),
        ("embedding-svc", 1),
    ]
    assert sum(row.request_count for row in framed.rows) == 0  # the tenant a caller names is not charged


# -------------------------------------------------------------------------------------------- TLS


def _tls(pki: Pki, mutual: bool) -> dict[str, object]:
    tls: dict[str, object] = {"cert_file": str(pki.server.cert_file), "key_file": str(pki.server.key_file)}
    if mutual:
        tls["client_ca_file"] = str(pki.ca_file)
    return {"tls": tls}


async def _chat_fails(config: c.ConnectionConfig) -> c.SekhaError:
    async with c.RouterClient(dataclasses.replace(config, default_timeout_s=5.0)) as router:
        with pytest.raises(c.SekhaError) as failed:
            await router.chat(ask())
    return failed.value


async def test_tls_works_end_to_end_and_plaintext_to_a_tls_port_fails(fake: FakeProvider, pki: Pki) -> None:
    app = await build_router_server(_router_config(fake, server=_tls(pki, mutual=False)))
    target = f"127.0.0.1:{app.port}"
    try:
        async with c.RouterClient(c.ConnectionConfig(target, root_certificates=pki.ca_file)) as router:
            assert (await router.chat(ask())).text == "echo: hello"
            assert await router.health() == "SERVING"
        plaintext = await _chat_fails(c.ConnectionConfig(target))
        assert plaintext.code == grpc.StatusCode.UNAVAILABLE
        # A client that does not trust the server's CA refuses to talk to it.
        untrusted = await _chat_fails(c.ConnectionConfig(target, tls=True))
        assert untrusted.code == grpc.StatusCode.UNAVAILABLE
    finally:
        await app.stop(0)
    assert fake.count("/v1/chat/completions") == 1


async def test_mutual_tls_refuses_clients_without_a_certificate_from_the_ca(
    fake: FakeProvider, pki: Pki
) -> None:
    app = await build_router_server(_router_config(fake, server=_tls(pki, mutual=True)))
    target = f"127.0.0.1:{app.port}"
    trusted = c.ConnectionConfig(target, root_certificates=pki.ca_file)
    try:
        no_cert = await _chat_fails(trusted)
        wrong_ca = await _chat_fails(
            dataclasses.replace(
                trusted, client_certificate=pki.stranger.cert_file, client_key=pki.stranger.key_file
            )
        )
        with_cert = dataclasses.replace(
            trusted, client_certificate=pki.client.cert_file, client_key=pki.client.key_file
        )
        async with c.RouterClient(with_cert) as router:
            assert (await router.chat(ask())).text == "echo: hello"
    finally:
        await app.stop(0)
    assert no_cert.code == grpc.StatusCode.UNAVAILABLE and wrong_ca.code == grpc.StatusCode.UNAVAILABLE
    assert fake.count("/v1/chat/completions") == 1


async def test_embedding_service_over_tls_reaches_the_router_over_mtls_with_its_own_key(
    fake: FakeProvider, pki: Pki, tmp_path: Path
) -> None:
    router = await build_router_server(
        _router_config(fake, server=_tls(pki, mutual=True), auth={"enabled": True, "keys": KEYS})
    )
    client_tls = {
        "ca_file": str(pki.ca_file),
        "cert_file": str(pki.client.cert_file),
        "key_file": str(pki.client.key_file),
    }
    emb_config = embedding_config(
        tmp_path,
        f"127.0.0.1:{router.port}",
        router={"api_key": EMBEDDER_KEY, "tls": client_tls},
        server={"tls": _tls(pki, mutual=False)["tls"]},
        auth={"enabled": True, "keys": KEYS},
    )
    embedding = await build_embedding_server(emb_config)
    connection = c.ConnectionConfig(
        f"127.0.0.1:{embedding.port}", root_certificates=pki.ca_file, api_key=ALICE_KEY
    )
    try:
        async with c.EmbeddingClient(connection) as client:
            reply = await client.upsert_documents(
                emb.UpsertDocumentsRequest(
                    base="notes", model="p/vec-16", documents=[emb.Document(id="a", text="hello")]
                )
            )
            assert reply.upserted_count == 1
            got = await client.get_documents(emb.GetDocumentsRequest(base="notes", ids=["a"]))
            assert [d.id for d in got.documents] == ["a"]
        async with c.EmbeddingClient(dataclasses.replace(connection, api_key=None)) as anonymous:
            with pytest.raises(c.UnauthenticatedError):
                await anonymous.get_documents(emb.GetDocumentsRequest(base="notes", ids=["a"]))
            assert await anonymous.health() == "SERVING"
    finally:
        await embedding.stop(0)
        await router.stop(0)
    embeds = [r for r in fake.requests if r.path == "/v1/embeddings"]
    assert len(embeds) == 1


async def test_unreadable_certificate_is_a_config_error(fake: FakeProvider, tmp_path: Path) -> None:
    missing = {"tls": {"cert_file": str(tmp_path / "nope.crt"), "key_file": str(tmp_path / "nope.key")}}
    with pytest.raises(ConfigError, match=r"server\.tls\.cert_file"):
        await build_router_server(_router_config(fake, server=missing))
