"""The Embedding domain against real Chroma (embedded, and a `chroma run` server for a subset).

Vectors come from the fake VectorSource in testkit/vectors.py; everything else is real:
Chroma collections, the SQLite registry, fusion.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import chromadb
import httpx
import pytest
from chromadb.config import Settings

from embedding_service.config import (
    BatchingConfig,
    ChromaConfig,
    DefaultsConfig,
    EmbeddingConfig,
    MigrationConfig,
)
from embedding_service.domain import (
    CollectionInUseError,
    DistanceMetric,
    DocumentIn,
    FusionMethod,
    MigrationState,
)
from embedding_service.service import EmbeddingStoreService
from embedding_service.store import ChromaStore
from sekha_runtime.errors import (
    DimensionMismatchError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from testkit.vectors import FakeVectorSource

CHROMA_BIN = Path(sys.executable).with_name("chroma")


# -- fixtures -------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A real `chroma run` server on a free loopback port, for the whole module."""
    data = tmp_path_factory.mktemp("chroma-server")
    port = _free_port()
    log_path = data / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(CHROMA_BIN), "run", "--path", str(data / "db"), "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"chroma run exited with {process.returncode}: {log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"chroma run did not answer: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        yield "127.0.0.1", port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def chroma(request: pytest.FixtureRequest, tmp_path: Path) -> ChromaConfig:
    """Embedded Chroma by default; `http` (indirect parametrization) uses the module's server."""
    if getattr(request, "param", "persistent") == "http":
        host, port = request.getfixturevalue("chroma_server")
        return ChromaConfig(mode="http", host=host, port=port)
    return ChromaConfig(mode="persistent", path=tmp_path / "chroma")


@pytest.fixture
def base() -> str:
    """A fresh base name: tests sharing one Chroma server never see each other's collections."""
    return f"kb{uuid.uuid4().hex[:10]}"


def make_config(
    tmp_path: Path, chroma: ChromaConfig, batching: BatchingConfig | None = None, **defaults: object
) -> EmbeddingConfig:
    return EmbeddingConfig(
        chroma=chroma,
        state_path=tmp_path / "state.sqlite3",
        defaults=DefaultsConfig(**defaults),  # type: ignore[arg-type]
        batching=batching or BatchingConfig(),
        migration=MigrationConfig(batch_size=4, retry_attempts=2, retry_backoff_s=0),
    )


OpenService = Callable[..., EmbeddingStoreService]


@pytest.fixture
async def open_service(tmp_path: Path, chroma: ChromaConfig) -> AsyncIterator[OpenService]:
    opened: list[EmbeddingStoreService] = []

    def factory(
        vectors: FakeVectorSource | None = None, batching: BatchingConfig | None = None, **defaults: object
    ) -> EmbeddingStoreService:
        service = EmbeddingStoreService.open(
            make_config(tmp_path, chroma, batching, **defaults), vectors or FakeVectorSource()
        )
        opened.append(service)
        return service

    yield factory
    for service in opened:
        await service.aclose()


def docs(*texts: str, prefix: str = "d", **metadata: object) -> list[DocumentIn]:
    return [DocumentIn(f"{prefix}{i}", text, dict(metadata)) for i, text in enumerate(texts)]  # type: ignore[arg-type]


def field_names(error: InvalidArgumentError) -> list[str]:
    return [violation.field for violation in error.violations]


BOTH = pytest.mark.parametrize("chroma", ["persistent", "http"], indirect=True)


# -- dimensions and naming ------------------------------------------------------------------------


async def test_dimension_is_detected_per_model_and_names_the_collection(
    open_service: OpenService, base: str, tmp_path: Path
) -> None:
    vectors = FakeVectorSource()
    service = open_service(vectors)

    for model in ("fake/mini-384", "base-768", "fake/large-1536"):
        result = await service.upsert(base, docs("alpha beta", "gamma delta"), model=model)
        assert result.upserted_count == 2

    page = await service.list_collections(base)
    assert [(c.name, c.dimension, c.model) for c in page.collections] == [
        (f"{base}_1536", 1536, "fake/large-1536"),
        (f"{base}_384", 384, "fake/mini-384"),
        (f"{base}_768", 768, "fake/base-768"),
    ]
    assert all(c.document_count == 2 and c.serving_reads and c.receiving_writes for c in page.collections)
    assert service.known_dimension("fake/base-768") == 768
    assert service.known_dimension("base-768") == 768

    # The collection itself records what it is, and carries the configured HNSW settings.
    client = chromadb.PersistentClient(
        path=str(tmp_path / "chroma"), settings=Settings(anonymized_telemetry=False)
    )
    stored = client.get_collection(f"{base}_768", embedding_function=None)  # type: ignore[arg-type]
    assert stored.metadata is not None
    assert {k: stored.metadata[k] for k in ("base", "dimension", "model", "distance_metric")} == {
        "base": base,
        "dimension": 768,
        "model": "fake/base-768",
        "distance_metric": "cosine",
    }
    assert "created_at" in stored.metadata
    hnsw = stored.configuration_json["hnsw"]
    assert (hnsw["space"], hnsw["ef_construction"], hnsw["ef_search"], hnsw["max_neighbors"]) == (
        "cosine",
        200,
        100,
        16,
    )


async def test_new_base_without_model_takes_the_routers_choice_and_keeps_it(
    open_service: OpenService, base: str
) -> None:
    vectors = FakeVectorSource(default_model="fake/base-768")
    service = open_service(vectors)

    first = await service.upsert(base, docs("one text"))
    second = await service.upsert(base, docs("another text", prefix="e"))

    assert [c.name for c in first.collections] == [f"{base}_768"]
    assert [c.name for c in second.collections] == [f"{base}_768"]
    # The second upsert asked for the base's stored model, not the router's choice again.
    assert [call.requested for call in vectors.calls] == [None, "fake/base-768"]


async def test_wrong_dimension_vector_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    store = ChromaStore(ChromaConfig(path=tmp_path / "chroma"))
    try:
        await store.create_collection("kb_4", base="kb", dimension=4, model="m", created_at=datetime.now(UTC))
        with pytest.raises(DimensionMismatchError) as caught:
            await store.upsert(
                "kb_4",
                ["a", "b"],
                [[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0]],
                ["A", "B"],
                [None, None],
            )
        assert (caught.value.expected, caught.value.got) == (4, 5)
        assert await store.count("kb_4") == 0
    finally:
        await store.aclose()


async def test_router_changing_a_models_dimension_is_refused(open_service: OpenService, base: str) -> None:
    vectors = FakeVectorSource()
    service = open_service(vectors)
    await service.upsert(base, docs("first text"), model="fake/mini-384")

    vectors.models["fake/mini-384"] = 512
    with pytest.raises(DimensionMismatchError):
        await service.upsert(base, docs("second text", prefix="x"))

    listed = await service.get(base, ids=["d0", "x0"])
    assert [d.id for d in listed.documents] == ["d0"]


# -- upsert / get / delete ------------------------------------------------------------------------


@BOTH
async def test_upsert_is_idempotent_and_replaces_text_and_metadata(
    open_service: OpenService, base: str
) -> None:
    service = open_service()
    await service.upsert(
        base, [DocumentIn("a", "old text", {"lang": "en", "year": 2020}), DocumentIn("b", "bee")]
    )
    result = await service.upsert(base, [DocumentIn("a", "new text", {"lang": "de"}), DocumentIn("b", "bee")])

    assert result.upserted_count == 2
    assert result.collections[0].document_count == 2
    got = await service.get(base, ids=["a"])
    assert got.documents[0].text == "new text"
    assert dict(got.documents[0].metadata) == {"lang": "de"}


@BOTH
async def test_get_by_ids_and_by_pages(open_service: OpenService, base: str) -> None:
    service = open_service()
    await service.upsert(base, [DocumentIn(f"id{i:02d}", f"text number {i}", {"n": i}) for i in range(25)])

    by_ids = await service.get(base, ids=["id07", "missing", "id03"], include_embeddings=True)
    assert [d.id for d in by_ids.documents] == ["id07", "id03"]
    assert by_ids.collection == f"{base}_384"
    assert all(d.embedding is not None and len(d.embedding) == 384 for d in by_ids.documents)
    assert by_ids.documents[0].metadata == {"n": 7}

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await service.get(base, page_size=10, page_token=token)
        assert all(d.embedding is None for d in page.documents)
        seen.extend(d.id for d in page.documents)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert sorted(seen) == [f"id{i:02d}" for i in range(25)]

    with pytest.raises(InvalidArgumentError) as caught:
        await service.get(base, page_token="not a token!")
    assert field_names(caught.value) == ["page_token"]


async def test_page_token_of_another_collection_is_refused(open_service: OpenService, base: str) -> None:
    service = open_service()
    await service.upsert(base, docs("a", "b", "c"), model="fake/mini-384")
    await service.upsert(base, docs("a", "b", "c"), model="fake/base-768")

    token = (await service.get(base, page_size=1)).next_page_token
    assert token
    with pytest.raises(InvalidArgumentError) as caught:
        await service.get(base, dimension=768, page_token=token)
    assert field_names(caught.value) == ["page_token"]
    with pytest.raises(NotFoundError):
        await service.get(base, dimension=999)


@BOTH
async def test_delete_by_ids_and_by_filter_hits_every_collection(
    open_service: OpenService, base: str
) -> None:
    service = open_service()
    documents = [
        DocumentIn("p1", "cats purr", {"topic": "pets"}),
        DocumentIn("p2", "dogs bark", {"topic": "pets"}),
        DocumentIn("s1", "stars shine", {"topic": "space"}),
        DocumentIn("s2", "planets orbit", {"topic": "space"}),
    ]
    await service.upsert(base, documents, model="fake/mini-384")
    await service.upsert(base, documents, model="fake/large-1536")

    assert await service.delete(base, ids=["p1", "nope"]) == 1
    assert await service.delete(base, where={"topic": "space"}) == 2

    for dimension in (384, 1536):
        remaining = await service.get(base, dimension=dimension)
        assert [d.id for d in remaining.documents] == ["p2"]

    with pytest.raises(InvalidArgumentError) as caught:
        await service.delete(base)
    assert field_names(caught.value) == ["ids"]


async def test_list_collections_pages_by_name(open_service: OpenService) -> None:
    service = open_service()
    for name in ("alpha", "bravo", "charlie"):
        await service.upsert(name, docs("some words"))

    first = await service.list_collections(page_size=2)
    second = await service.list_collections(page_size=2, page_token=first.next_page_token)

    assert [c.name for c in first.collections] == ["alpha_384", "bravo_384"]
    assert [c.name for c in second.collections] == ["charlie_384"]
    assert second.next_page_token == ""
    only = await service.list_collections(base="bravo")
    assert [c.name for c in only.collections] == ["bravo_384"]
    with pytest.raises(InvalidArgumentError):
        await service.list_collections(base="alpha", page_token=first.next_page_token)


async def test_upsert_of_6000_documents_is_chunked_below_chromas_batch_limit(
    open_service: OpenService, base: str
) -> None:
    vectors = FakeVectorSource({"fake/tiny-8": 8})
    # One write batch bigger than Chroma's maximum (about 5461): the store must chunk it. (A first
    # call that large only happens when the batching config says so: see test_batching.py.)
    service = open_service(
        vectors,
        BatchingConfig(initial_size=6000),
        write_batch_size=6000,
        max_documents_per_request=6000,
    )
    documents = [DocumentIn(f"doc{i}", f"w{i % 97} w{i % 13} w{i}") for i in range(6000)]

    result = await service.upsert(base, documents)

    assert result.collections[0].document_count == 6000
    assert len(vectors.calls) == 1


async def test_upserts_are_pipelined_in_write_batches(open_service: OpenService, base: str) -> None:
    vectors = FakeVectorSource()
    service = open_service(vectors, write_batch_size=3)

    await service.upsert(base, docs(*(f"text {i}" for i in range(10))))

    assert [len(call.texts) for call in vectors.calls] == [3, 3, 3, 1]
    assert (await service.list_collections(base)).collections[0].document_count == 10


# -- search ---------------------------------------------------------------------------------------

QUERY = "which document"
# Hand-made geometry: the 4-d collection ranks `rival` first and `target` second; the 8-d one
# ranks `target` first and `rival` third. Fusion must put `target` first.
PINNED = {
    "fake/four-4": {
        QUERY: [1, 0, 0, 0],
        "rival text": [0.99, 0.14, 0, 0],
        "target text": [0.9, 0.43, 0, 0],
        "other text": [0, 0, 1, 0],
    },
    "fake/eight-8": {
        QUERY: [1, 0, 0, 0, 0, 0, 0, 0],
        "target text": [0.98, 0.2, 0, 0, 0, 0, 0, 0],
        "other text": [0.9, 0, 0.43, 0, 0, 0, 0, 0],
        "rival text": [0.5, 0, 0, 0.86, 0, 0, 0, 0],
    },
}


def pinned_source() -> FakeVectorSource:
    return FakeVectorSource({"fake/four-4": 4, "fake/eight-8": 8}, pinned=PINNED)


@BOTH
async def test_search_fuses_collections_of_different_dimensions(open_service: OpenService, base: str) -> None:
    vectors = pinned_source()
    service = open_service(vectors)
    documents = [
        DocumentIn("rival", "rival text", {"lang": "en"}),
        DocumentIn("target", "target text", {"lang": "de"}),
        DocumentIn("other", "other text", {"lang": "en"}),
    ]
    await service.upsert(base, documents, model="fake/four-4")
    await service.upsert(base, documents, model="fake/eight-8")

    only_small = await service.search(base, QUERY, top_k=3, dimensions=[4])
    assert [hit.id for hit in only_small.hits][:2] == ["rival", "target"]

    vectors.calls.clear()
    fused = await service.search(base, QUERY, top_k=3)

    assert sorted(fused.collections) == sorted([f"{base}_4", f"{base}_8"])
    assert [hit.id for hit in fused.hits] == ["target", "rival", "other"]
    top = fused.hits[0]
    assert top.text == "target text"
    assert top.metadata == {"lang": "de"}
    assert {(m.collection, m.rank) for m in top.matches} == {(f"{base}_4", 2), (f"{base}_8", 1)}
    assert top.score == pytest.approx(1 / 62 + 1 / 61)
    # The query was embedded once per model, each with its own model.
    assert sorted(call.model for call in vectors.calls) == ["fake/eight-8", "fake/four-4"]

    # Filtered: each collection ranks one of the two first, so RRF ties and the smaller id wins.
    filtered = await service.search(base, QUERY, top_k=3, where={"lang": "en"})
    assert [hit.id for hit in filtered.hits] == ["other", "rival"]


async def test_search_weights_and_min_max_fusion(open_service: OpenService, base: str) -> None:
    service = open_service(pinned_source())
    documents = [DocumentIn(i, f"{i} text") for i in ("rival", "target", "other")]
    await service.upsert(base, documents, model="fake/four-4")
    await service.upsert(base, documents, model="fake/eight-8")

    small_only = await service.search(base, QUERY, top_k=2, collection_weights={f"{base}_8": 0.0})
    assert [hit.id for hit in small_only.hits] == ["rival", "target"]

    min_max = await service.search(base, QUERY, top_k=3, fusion_method=FusionMethod.MIN_MAX)
    assert min_max.hits[0].id == "target"
    assert min_max.hits[0].score <= 2.0


async def test_search_validation_names_fields(open_service: OpenService, base: str) -> None:
    service = open_service()
    await service.upsert(base, docs("words"))
    cases = [
        ({"query": ""}, "query"),
        ({"top_k": 500}, "top_k"),
        ({"rrf_k": -1}, "rrf_k"),
        ({"dimensions": [384, 0]}, "dimensions[1]"),
        ({"where": {"$nope": 1}}, "metadata_filter"),
        ({"collection_weights": {f"{base}_384": -1.0}}, f"collection_weights[{base}_384]"),
    ]
    for overrides, field in cases:
        arguments: dict[str, object] = {"base": base, "query": "words", **overrides}
        with pytest.raises(InvalidArgumentError) as caught:
            await service.search(**arguments)  # type: ignore[arg-type]
        assert field_names(caught.value) == [field], overrides
    with pytest.raises(NotFoundError) as missing:
        await service.search("nobase", "words")
    assert missing.value.resource_type == "base"


async def test_upsert_validation_names_fields(open_service: OpenService, base: str) -> None:
    service = open_service(max_text_chars=20, max_metadata_keys=2)
    cases = [
        (
            [DocumentIn("a", "x"), DocumentIn("b", "y"), DocumentIn("c", "z"), DocumentIn("", "w")],
            "documents[3].id",
        ),
        ([DocumentIn("a", "x"), DocumentIn("a", "y")], "documents[1].id"),
        ([DocumentIn("a", "x" * 21)], "documents[0].text"),
        ([DocumentIn("a", "   ")], "documents[0].text"),
        ([DocumentIn("a", "x", {"k": [1, 2]})], "documents[0].metadata[k]"),  # type: ignore[dict-item]
        ([DocumentIn("a", "x", {"a": 1, "b": 2, "c": 3})], "documents[0].metadata"),
        ([], "documents"),
    ]
    for documents, field in cases:
        with pytest.raises(InvalidArgumentError) as caught:
            await service.upsert(base, documents)
        assert field_names(caught.value) == [field]
    with pytest.raises(InvalidArgumentError) as bad_base:
        await service.upsert("Bad Base!", docs("x"))
    assert field_names(bad_base.value) == ["base"]
    assert (await service.list_collections()).collections == []


async def test_router_down_is_unavailable_and_writes_nothing(open_service: OpenService, base: str) -> None:
    vectors = FakeVectorSource()
    service = open_service(vectors)
    await service.upsert(base, docs("kept"))
    vectors.fail = True

    with pytest.raises(UnavailableError):
        await service.upsert(base, docs("lost", prefix="x"))
    with pytest.raises(UnavailableError):
        await service.search(base, "kept")
    assert [d.id for d in (await service.get(base)).documents] == ["d0"]


# -- collections: delete, adopt -------------------------------------------------------------------


async def test_delete_collection_refuses_the_primary_and_drops_a_secondary(
    open_service: OpenService, base: str
) -> None:
    service = open_service()
    await service.upsert(base, docs("x"), model="fake/mini-384")
    await service.upsert(base, docs("x"), model="fake/base-768")

    with pytest.raises(CollectionInUseError) as caught:
        await service.delete_collection(f"{base}_384")
    assert caught.value.subject == f"{base}_384"
    assert await service.delete_collection(f"{base}_768") == f"{base}_768"
    assert [c.name for c in (await service.list_collections(base)).collections] == [f"{base}_384"]
    with pytest.raises(NotFoundError):
        await service.delete_collection(f"{base}_768")


async def test_adopt_registers_a_v1_collection_without_reembedding(
    open_service: OpenService, tmp_path: Path
) -> None:
    vectors = FakeVectorSource()
    service = open_service(vectors)
    texts = ["red apples", "green pears", "yellow bananas"]
    client = chromadb.PersistentClient(
        path=str(tmp_path / "chroma"), settings=Settings(anonymized_telemetry=False)
    )
    legacy = client.create_collection("legacydocs", embedding_function=None)  # type: ignore[arg-type]
    legacy.add(
        ids=["a", "b", "c"],
        embeddings=[vectors.vector(t, "fake/mini-384") for t in texts],  # type: ignore[arg-type]
        documents=texts,
    )

    info = await service.adopt("legacydocs", "fruit", "fake/mini-384")

    assert (info.name, info.dimension, info.document_count, info.distance_metric) == (
        "fruit_384",
        384,
        3,
        DistanceMetric.L2,  # Chroma's default space, read back from the collection
    )
    assert vectors.calls == []
    found = await service.search("fruit", "green pears", top_k=1)
    assert found.hits[0].id == "b"
    assert found.collections == ["fruit_384"]
    # Writes to the base land in the adopted collection, which keeps its old name for v1 readers.
    await service.upsert("fruit", [DocumentIn("d", "purple plums")])
    assert legacy.count() == 4
    with pytest.raises(NotFoundError):
        await service.adopt("no_such_collection", "fruit2", "fake/mini-384")


# -- migration switch (also on the server) --------------------------------------------------------


@BOTH
async def test_migration_switches_reads_to_the_new_model(open_service: OpenService, base: str) -> None:
    vectors = FakeVectorSource()
    service = open_service(vectors)
    await service.upsert(base, docs(*(f"sentence about topic {i}" for i in range(10))), model="fake/mini-384")

    migration = await service.start_migration(base, "fake/large-1536", batch_size=3)
    done = await service.wait_for_migration(migration.id)

    assert done.state is MigrationState.COMPLETED
    assert (done.total_documents, done.migrated_documents) == (10, 10)
    by_name = {c.name: c for c in (await service.list_collections(base)).collections}
    assert by_name[f"{base}_1536"].serving_reads and by_name[f"{base}_1536"].receiving_writes
    assert not by_name[f"{base}_384"].serving_reads and not by_name[f"{base}_384"].receiving_writes
    assert by_name[f"{base}_1536"].document_count == 10
    result = await service.search(base, "sentence about topic 7", top_k=1)
    assert result.collections == [f"{base}_1536"]
    assert result.hits[0].id == "d7"


# -- configuration --------------------------------------------------------------------------------


def test_packaged_defaults_match_the_models_defaults(tmp_path: Path) -> None:
    assert EmbeddingConfig.load(None, environ={}) == EmbeddingConfig()
    path = tmp_path / "embedding.yaml"
    path.write_text("chroma:\n  mode: http\n  port: 9000\ndefaults:\n  fetch_multiplier: 4\n")
    loaded = EmbeddingConfig.load(path, environ={"SEKHA_EMBEDDING__DEFAULTS__TOP_K": "5"})
    assert (loaded.chroma.mode, loaded.chroma.port, loaded.defaults.fetch_multiplier) == ("http", 9000, 4)
    assert loaded.defaults.top_k == 5


@pytest.mark.parametrize(
    "defaults",
    [{"fetch_multiplier": 1}, {"fetch_multiplier": 5}, {"top_k": 300}, {"unknown_key": 1}],
)
def test_config_refuses_out_of_range_values(defaults: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        DefaultsConfig(**defaults)  # type: ignore[arg-type]


async def test_unreachable_chroma_server_is_unavailable(tmp_path: Path) -> None:
    down = ChromaConfig(mode="http", host="127.0.0.1", port=_free_port())
    service = EmbeddingStoreService.open(make_config(tmp_path, down), FakeVectorSource())
    try:
        with pytest.raises(UnavailableError):
            await service.check_health()
        with pytest.raises(UnavailableError):
            await service.upsert("kb", docs("nowhere to go"))
    finally:
        await service.aclose()
