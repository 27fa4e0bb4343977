"""Checks that hold for every request of both services, over real gRPC on real servers.

* An enum field holding a number its enum does not declare (proto3 keeps it) is refused with
  INVALID_ARGUMENT naming the field, for every enum of every request, found from the descriptors
  so that a new RPC or enum is covered without touching this file.
* Identifiers an error could echo are capped, and whatever an error echoes is bounded: a
  megabyte-long name gets a short INVALID_ARGUMENT, never a status the client cannot read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from embedding_service.server import EmbeddingDeps
from sekha import client as c
from sekha.embedding.v1 import embedding_service_pb2 as emb
from sekha.embedding.v1 import embedding_service_pb2_grpc as emb_grpc
from sekha.router.v1 import router_service_pb2 as rt
from sekha.router.v1 import router_service_pb2_grpc as rt_grpc
from testkit.fake_provider import FakeProvider
from testkit.harness import (
    chat_model,
    embedding_config,
    openai_provider,
    router_config,
    running_embedding,
    running_router,
)
from testkit.vectors import FakeVectorSource

UNDECLARED = 99
HUGE = 1024 * 1024


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as provider:
        yield provider


@pytest.fixture
async def router(fake: FakeProvider) -> AsyncIterator[c.RouterClient]:
    config = router_config([openai_provider("primary", fake.base_url, [chat_model("alpha")])])
    async with running_router(config) as (_, client):
        yield client


@pytest.fixture
async def embedding(tmp_path: Path) -> AsyncIterator[c.EmbeddingClient]:
    config = embedding_config(tmp_path, "127.0.0.1:1")
    async with running_embedding(config, EmbeddingDeps(vectors=FakeVectorSource())) as (_, client):
        yield client


def _enum_paths(descriptor: Descriptor, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, ...]]:
    """Every enum field reachable in a request type, as the field names leading to it."""
    if depth > 6:
        return
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_ENUM:
            yield (*prefix.split(".")[1:], field.name) if prefix else (field.name,)
        elif field.type == FieldDescriptor.TYPE_MESSAGE and not field.message_type.GetOptions().map_entry:
            if not field.message_type.full_name.startswith("google."):
                yield from _enum_paths(field.message_type, f"{prefix}.{field.name}", depth + 1)


def _with_undeclared_enum(message: Message, names: tuple[str, ...]) -> str:
    """Set the enum at `names` (creating its parents, one element of each list) to an undeclared
    number; return the field path the service must name."""
    path = []
    for name in names[:-1]:
        field = message.DESCRIPTOR.fields_by_name[name]
        if field.is_repeated:
            message = getattr(message, name).add()
            path.append(f"{name}[0]")
        else:
            message = getattr(message, name)
            path.append(name)
    last = message.DESCRIPTOR.fields_by_name[names[-1]]
    if last.is_repeated:
        getattr(message, names[-1]).append(UNDECLARED)
        path.append(f"{names[-1]}[0]")
    else:
        setattr(message, names[-1], UNDECLARED)
        path.append(names[-1])
    return ".".join(path)


async def _call(stub: Any, method: Any, request: Message) -> grpc.aio.AioRpcError:
    call = getattr(stub, method.name)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        if method.server_streaming:
            async for _ in call(request, timeout=10):
                pass
        else:
            await call(request, timeout=10)
    return refused.value


def _violations(error: grpc.aio.AioRpcError) -> list[str]:
    return [field for field, _ in c.error_from_rpc(error).details.field_violations]


async def test_every_enum_of_every_request_refuses_an_undeclared_value(
    router: c.RouterClient, embedding: c.EmbeddingClient
) -> None:
    checked = []
    for client, module, pb, name in (
        (router, rt_grpc, rt, "RouterService"),
        (embedding, emb_grpc, emb, "EmbeddingService"),
    ):
        stub = getattr(module, f"{name}Stub")(client.channel)
        for method in pb.DESCRIPTOR.services_by_name[name].methods:
            for names in _enum_paths(method.input_type):
                message = getattr(pb, method.input_type.name)()
                path = _with_undeclared_enum(message, names)
                refused = await _call(stub, method, message)
                assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT, (method.name, path)
                assert path in _violations(refused), (method.name, path, refused.details())
                assert str(UNDECLARED) in refused.details()
                checked.append(f"{method.name}:{path}")
    assert {
        "ListModels:task",
        "Chat:messages[0].parts[0].image.detail",
        "StreamChat:routing.required_capabilities[0]",
        "GetSpend:grouping",
        "SearchDocuments:fusion_method",
    } <= set(checked)


async def test_an_undeclared_image_detail_is_refused_through_the_client(router: c.RouterClient) -> None:
    image = rt.ContentPart(image=rt.Image(url="https://example.com/cat.png", detail=UNDECLARED))  # type: ignore[arg-type]
    request = rt.ChatRequest(messages=[rt.ChatMessage(role=rt.ROLE_USER, parts=[image])])
    with pytest.raises(c.InvalidArgumentError) as refused:
        await router.chat(request)
    assert [f for f, _ in refused.value.details.field_violations] == ["messages[0].parts[0].image.detail"]
    with pytest.raises(c.InvalidArgumentError) as refused:
        await router.list_models(rt.ListModelsRequest(task=UNDECLARED))  # type: ignore[arg-type]
    assert [f for f, _ in refused.value.details.field_violations] == ["task"]


def _error_size(error: c.SekhaError) -> int:
    details = error.details
    return len(error.message) + sum(len(f) + len(d) for f, d in details.field_violations)


async def test_router_identifiers_are_capped_and_never_echoed_whole(router: c.RouterClient) -> None:
    for length in (5000, HUGE):
        with pytest.raises(c.InvalidArgumentError) as refused:
            await router.get_provider_status(rt.GetProviderStatusRequest(provider_id="p" * length))
        assert [f for f, _ in refused.value.details.field_violations] == ["provider_id"]
        assert _error_size(refused.value) < 1000
        request = rt.ChatRequest(
            messages=[c.user("hi")], routing=rt.RoutingPreferences(preferred_model="m" * length)
        )
        with pytest.raises(c.InvalidArgumentError) as refused:
            await router.chat(request)
        assert [f for f, _ in refused.value.details.field_violations] == ["routing.preferred_model"]
        assert _error_size(refused.value) < 1000
    with pytest.raises(c.InvalidArgumentError) as refused:
        await router.list_models(rt.ListModelsRequest(provider_id="p" * HUGE))
    assert [f for f, _ in refused.value.details.field_violations] == ["provider_id"]
    # Under the cap, an unknown name is NOT_FOUND as before.
    with pytest.raises(c.NotFoundError):
        await router.get_provider_status(rt.GetProviderStatusRequest(provider_id="p" * 100))


async def test_embedding_identifiers_are_capped_and_never_echoed_whole(embedding: c.EmbeddingClient) -> None:
    calls = {
        "id": lambda: embedding.get_migration(emb.GetMigrationRequest(id="x" * HUGE)),
        "name": lambda: embedding.delete_collection(emb.DeleteCollectionRequest(name="x" * HUGE)),
        "source_collection": lambda: embedding.adopt_collection(
            emb.AdoptCollectionRequest(source_collection="x" * HUGE, base="notes", model="m")
        ),
        "base": lambda: embedding.list_collections(emb.ListCollectionsRequest(base="x" * HUGE)),
        "target_model": lambda: embedding.start_migration(
            emb.StartMigrationRequest(base="notes", target_model="x" * HUGE)
        ),
    }
    for field, call in calls.items():
        with pytest.raises(c.InvalidArgumentError) as refused:
            await call()
        assert [f for f, _ in refused.value.details.field_violations] == [field]
        assert _error_size(refused.value) < 1000
    with pytest.raises(c.NotFoundError):  # under the cap: the usual answer
        await embedding.get_migration(emb.GetMigrationRequest(id="x" * 100))


async def test_whatever_an_error_echoes_is_bounded(embedding: c.EmbeddingClient) -> None:
    # A map key is not an identifier with a cap of its own, and the refusal names it in its path.
    request = emb.SearchDocumentsRequest(base="notes", query="q", collection_weights={"w" * HUGE: -1.0})
    with pytest.raises(c.InvalidArgumentError) as refused:
        await embedding.search_documents(request)
    [(field, _)] = refused.value.details.field_violations
    assert field.startswith("collection_weights[www")
    assert len(refused.value.message) <= 512 and _error_size(refused.value) < 2000
