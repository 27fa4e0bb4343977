"""Fuzzing every RPC of both services over real servers and channels.

Strategies are built from the protobuf descriptors, so a new field or RPC is fuzzed without
touching this file: random values per field type (biased towards values the services know),
nested messages to a bounded depth, oneofs, maps and repeated fields. Half of the cases are a
valid request with one or two fields replaced by random values, so fuzzing also reaches past
validation into routing, providers and Chroma (the test checks that some calls succeed).
A second test sends random bytes as the serialized request.

Every call must end within its deadline with a status a caller can act on: never UNKNOWN,
never INTERNAL (an unhandled exception), never DEADLINE_EXCEEDED (a hang).

The servers (router with the fake provider; embedding service with a real Chroma and that
router) run in a background thread with their own event loop; Hypothesis drives a blocking
channel from the test thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as pd
from google.protobuf import message_factory
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedding_service.server import build_server as build_embedding_server
from router_service.server import build_server as build_router_server
from sekha.embedding.v1 import embedding_service_pb2 as emb
from sekha.router.v1 import router_service_pb2 as rt
from testkit.fake_provider import FakeProvider
from testkit.harness import chat_model, embedding_config, embedding_model, openai_provider, router_config

EXAMPLES_PER_RPC = 300
RAW_EXAMPLES_PER_RPC = 60
DEADLINE_S = 5.0
MAX_DEPTH = 4
FORBIDDEN = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.DATA_LOSS,
}
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES_PER_RPC,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
)

# Values the services give meaning to, so fuzzed requests reach past the first validation.
KNOWN_STRINGS = [
    "",
    " ",
    "alpha",
    "beta",
    "p/alpha",
    "vec-16",
    "p/vec-16",
    "vec-32",
    "notes",
    "fuzz",
    "fuzz_16",
    "d1",
    "image/png",
    "image/jpeg",
    "text/html",
    "https://example.com/cat.png",
    "http://169.254.169.254/",
    "data:image/png;base64,iVBORw0KGgo=",
    "data:image/png;base64,!!!",
    "$and",
    "$or",
    "$eq",
    "chroma:id",
    "tenant",
    "x" * 300,
    "\u0000",
    "\U0001f600" * 10,
]
KNOWN_INTS = [0, 1, -1, 2, 3, 10, 16, 32, 200, 201, 1000, 1001, 2**31 - 1, -(2**31)]


def _int_strategy(bits: int, signed: bool) -> st.SearchStrategy[int]:
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    known = [v for v in KNOWN_INTS if low <= v <= high]
    return st.one_of(st.sampled_from(known), st.integers(low, high))


_T = pd.FieldDescriptor
_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    _T.TYPE_INT32: _int_strategy(32, True),
    _T.TYPE_SINT32: _int_strategy(32, True),
    _T.TYPE_SFIXED32: _int_strategy(32, True),
    _T.TYPE_INT64: _int_strategy(64, True),
    _T.TYPE_SINT64: _int_strategy(64, True),
    _T.TYPE_SFIXED64: _int_strategy(64, True),
    _T.TYPE_UINT32: _int_strategy(32, False),
    _T.TYPE_FIXED32: _int_strategy(32, False),
    _T.TYPE_UINT64: _int_strategy(64, False),
    _T.TYPE_FIXED64: _int_strategy(64, False),
    _T.TYPE_DOUBLE: st.floats(),
    _T.TYPE_FLOAT: st.floats(width=32),
    _T.TYPE_BOOL: st.booleans(),
    _T.TYPE_STRING: st.one_of(st.sampled_from(KNOWN_STRINGS), st.text(max_size=40)),
    _T.TYPE_BYTES: st.one_of(
        st.just(bytes.fromhex("89504e470d0a1a0a0000000d49484452")), st.binary(max_size=64)
    ),
}


def _value_strategy(field: pd.FieldDescriptor, depth: int) -> st.SearchStrategy[Any] | None:
    """One value of the field (not the repeated container); None when too deep to recurse."""
    if field.type == _T.TYPE_MESSAGE:
        return message_strategy(field.message_type, depth + 1) if depth < MAX_DEPTH else None
    if field.type == _T.TYPE_ENUM:
        numbers = [v.number for v in field.enum_type.values]
        known = st.sampled_from([n for n in numbers if n != 0] or numbers)
        return st.one_of(known, known, st.sampled_from(numbers), st.integers(-3, 40))  # open enums
    return _SCALARS[field.type]


def _is_map(field: pd.FieldDescriptor) -> bool:
    return field.type == _T.TYPE_MESSAGE and field.message_type.GetOptions().map_entry and field.is_repeated


def _field_strategy(field: pd.FieldDescriptor, depth: int) -> st.SearchStrategy[Any] | None:
    if _is_map(field):
        key = _value_strategy(field.message_type.fields_by_name["key"], depth)
        value = _value_strategy(field.message_type.fields_by_name["value"], depth)
        if key is None or value is None:
            return None
        return st.dictionaries(key, value, max_size=4)
    value = _value_strategy(field, depth)
    if value is None:
        return None
    if field.is_repeated:
        return st.lists(value, max_size=5)
    return value


def _assign(message: Message, field: pd.FieldDescriptor, value: Any) -> None:
    if _is_map(field):
        container = getattr(message, field.name)
        for key, item in value.items():
            if isinstance(item, Message):
                container[key].CopyFrom(item)
            else:
                container[key] = item
    elif field.is_repeated:
        getattr(message, field.name).extend(value)
    elif field.type == _T.TYPE_MESSAGE:
        getattr(message, field.name).CopyFrom(value)
    else:
        setattr(message, field.name, value)


def message_strategy(descriptor: pd.Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of `descriptor`: any subset of fields set, at most one field per oneof."""
    cls = message_factory.GetMessageClass(descriptor)
    plain = [f for f in descriptor.fields if f.containing_oneof is None]
    strategies = {f.name: s for f in plain if (s := _field_strategy(f, depth)) is not None}
    oneofs = []
    for oneof in descriptor.oneofs:
        options = [
            st.tuples(st.just(f.name), s)
            for f in oneof.fields
            if (s := _field_strategy(f, depth)) is not None
        ]
        oneofs.append(st.one_of(st.none(), *options) if options else st.none())

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = cls()
        for name, strategy in strategies.items():
            if draw(st.booleans()):
                _assign(message, descriptor.fields_by_name[name], draw(strategy))
        for choice in oneofs:
            picked = draw(choice)
            if picked is not None:
                _assign(message, descriptor.fields_by_name[picked[0]], picked[1])
        return message

    return build()


def mutated(seed: Message) -> st.SearchStrategy[Message]:
    """`seed` with zero, one or two top-level fields replaced by random values (or cleared)."""
    descriptor = seed.DESCRIPTOR
    fields = [f for f in descriptor.fields if _field_strategy(f, 0) is not None]

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = type(seed)()
        message.CopyFrom(seed)
        for field in draw(st.lists(st.sampled_from(fields), max_size=2, unique_by=lambda f: f.name)):
            message.ClearField(field.name)
            if draw(st.booleans()):
                strategy = _field_strategy(field, 0)
                assert strategy is not None
                _assign(message, field, draw(strategy))
        return message

    return build()


def _user(text: str) -> rt.ChatMessage:
    return rt.ChatMessage(role=rt.ROLE_USER, parts=[rt.ContentPart(text=text)])


SEEDS: dict[str, Message] = {
    "Route": rt.RouteRequest(messages=[_user("hi")], max_tokens=20),
    "Chat": rt.ChatRequest(messages=[_user("hello")], generation=rt.GenerationConfig(max_tokens=20)),
    "StreamChat": rt.StreamChatRequest(
        messages=[_user("hello")], generation=rt.GenerationConfig(max_tokens=20)
    ),
    "Embed": rt.EmbedRequest(inputs=["hello", "world"]),
    "GetProviderStatus": rt.GetProviderStatusRequest(provider_id="p"),
    "UpsertDocuments": emb.UpsertDocumentsRequest(
        base="fuzz",
        model="p/vec-16",
        documents=[emb.Document(id="d1", text="hello", metadata={"k": emb.MetadataValue(string_value="v")})],
    ),
    "GetDocuments": emb.GetDocumentsRequest(base="fuzz", ids=["d1"]),
    "DeleteDocuments": emb.DeleteDocumentsRequest(base="fuzz", ids=["d2"]),
    "SearchDocuments": emb.SearchDocumentsRequest(base="fuzz", query="hello", top_k=3),
    "DeleteCollection": emb.DeleteCollectionRequest(name="fuzz_32"),
    "AdoptCollection": emb.AdoptCollectionRequest(
        source_collection="fuzz_16", base="adopted", model="p/vec-16"
    ),
    "StartMigration": emb.StartMigrationRequest(base="fuzz", target_model="p/vec-32"),
}
# RPCs whose fuzzing must see successes too, or it never got past validation.
MUST_SUCCEED = {
    "Route",
    "Chat",
    "StreamChat",
    "Embed",
    "ListModels",
    "UpsertDocuments",
    "GetDocuments",
    "SearchDocuments",
    "ListCollections",
}


def request_strategy(method: pd.MethodDescriptor) -> st.SearchStrategy[Message]:
    seed = SEEDS.get(method.name) or message_factory.GetMessageClass(method.input_type)()
    return st.one_of(message_strategy(method.input_type), mutated(seed))


# ------------------------------------------------------------------------------------ servers


@dataclass
class Stack:
    router_target: str
    embedding_target: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Router + embedding service on their own loop in a background thread."""
    tmp_path: Path = tmp_path_factory.mktemp("fuzz")
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def start() -> None:
        fake = FakeProvider()
        await fake.start()
        router = await build_router_server(
            router_config(
                [
                    openai_provider(
                        "p",
                        fake.base_url,
                        [
                            chat_model("alpha"),
                            chat_model("beta", tasks=("chat_small",)),
                            embedding_model("vec-16", 16),
                            embedding_model("vec-32", 32),
                        ],
                        transport="native",
                    ),
                ],
                server={"max_concurrent_rpcs": 64},
            )
        )
        embedding = await build_embedding_server(embedding_config(tmp_path, f"127.0.0.1:{router.port}"))
        state.update(fake=fake, router=router, embedding=embedding)

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="fuzz-servers", daemon=True)
    thread.start()
    ready.wait(60)

    async def stop() -> None:
        await state["embedding"].stop(0)
        await state["router"].stop(0)
        await state["fake"].stop()

    try:
        yield Stack(f"127.0.0.1:{state['router'].port}", f"127.0.0.1:{state['embedding'].port}")
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def _methods() -> list[tuple[str, pd.MethodDescriptor]]:
    return [
        (service, method)
        for service, module in (("router", rt), ("embedding", emb))
        for svc in module.DESCRIPTOR.services_by_name.values()
        for method in svc.methods
    ]


METHODS = _methods()


def _call(channel: grpc.Channel, method: pd.MethodDescriptor, payload: Message | bytes) -> grpc.StatusCode:
    """Make one call; fail the test on a forbidden status. Raw bytes go out unserialized."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    serializer: Callable[[Any], bytes] | None = (
        None if isinstance(payload, bytes) else type(payload).SerializeToString
    )
    try:
        if method.server_streaming:
            for _ in channel.unary_stream(path, request_serializer=serializer)(payload, timeout=DEADLINE_S):
                pass
        else:
            channel.unary_unary(path, request_serializer=serializer)(payload, timeout=DEADLINE_S)
    except grpc.RpcError as exc:
        code = exc.code()  # type: ignore[attr-defined]
        assert code not in FORBIDDEN, f"{path} answered {code}: {exc.details()}"  # type: ignore[attr-defined]
        return code  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def channels(stack: Stack) -> Iterator[dict[str, grpc.Channel]]:
    opened = {
        "router": grpc.insecure_channel(stack.router_target),
        "embedding": grpc.insecure_channel(stack.embedding_target),
    }
    yield opened
    for channel in opened.values():
        channel.close()


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[f"{s}.{m.name}" for s, m in METHODS])
def test_fuzzed_requests_get_a_proper_status(
    channels: dict[str, grpc.Channel], service: str, method: pd.MethodDescriptor
) -> None:
    outcomes: Counter[grpc.StatusCode] = Counter()

    @FUZZ_SETTINGS
    @given(request_strategy(method))
    def fuzz(request: Message) -> None:
        outcomes[_call(channels[service], method, request)] += 1

    fuzz()
    if method.name in MUST_SUCCEED:
        assert outcomes[grpc.StatusCode.OK] > 0, outcomes


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[f"{s}.{m.name}" for s, m in METHODS])
def test_garbage_bytes_get_a_proper_status(
    channels: dict[str, grpc.Channel], service: str, method: pd.MethodDescriptor
) -> None:
    @settings(FUZZ_SETTINGS, max_examples=RAW_EXAMPLES_PER_RPC)
    @given(st.one_of(st.binary(max_size=512), st.just(b"\xff" * 16), st.just(b"\x0a\xff\xff\xff\xff\x0f")))
    def fuzz(payload: bytes) -> None:
        _call(channels[service], method, payload)

    fuzz()
