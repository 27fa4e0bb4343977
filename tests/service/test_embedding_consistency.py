"""The Embedding service over gRPC: filters with fractional numbers, and reads that agree.

Real processes' worth of parts in one event loop: the generated client -> EmbeddingService
-> RouterService.Embed -> the fake OpenAI-compatible provider over HTTP; Chroma runs embedded.

* Fractional filter numbers (chroma-core/chroma#7491): SearchDocuments and DeleteDocuments
  with every operator give what a plain-Python evaluation of the filter gives
  (tests/where_oracle.py); a delete never removes a document the filter does not match.
* GetDocuments and DeleteDocuments see every collection SearchDocuments reads, so a
  document search finds can be read and deleted by id.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sekha.client import EmbeddingClient
from sekha.embedding.v1 import embedding_service_pb2 as emb
from testkit.fake_provider import FakeProvider
from testkit.harness import (
    embedding_config,
    embedding_model,
    openai_provider,
    router_config,
    running_embedding,
    running_router,
)
from tests.where_oracle import ALL_IDS, expected, filters, metadata_of

MODELS = {"mini-384": 384, "base-768": 768}


def metadata_value(value: object) -> emb.MetadataValue:
    if isinstance(value, bool):  # first: a bool is an int
        return emb.MetadataValue(bool_value=value)
    if isinstance(value, int):
        return emb.MetadataValue(int_value=value)
    if isinstance(value, float):
        return emb.MetadataValue(double_value=value)
    return emb.MetadataValue(string_value=str(value))


def document(doc_id: str, text: str, metadata: dict[str, object]) -> emb.Document:
    return emb.Document(
        id=doc_id, text=text, metadata={key: metadata_value(value) for key, value in metadata.items()}
    )


@contextlib.asynccontextmanager
async def embedding_stack(
    tmp_path: Path, **sections: Any
) -> AsyncIterator[tuple[EmbeddingClient, FakeProvider]]:
    async with FakeProvider() as fake:
        config = router_config(
            [openai_provider("vec", fake.base_url, [embedding_model(n, d) for n, d in MODELS.items()])]
        )
        async with running_router(config) as (router_app, _):
            emb_config = embedding_config(tmp_path, f"127.0.0.1:{router_app.port}", **sections)
            async with running_embedding(emb_config) as (_, client):
                yield client, fake


async def ids_stored(client: EmbeddingClient, base: str) -> list[str]:
    got = await client.get_documents(emb.GetDocumentsRequest(base=base, ids=ALL_IDS))
    return sorted(d.id for d in got.documents)


# -- fractional filters ---------------------------------------------------------------------------


async def test_fractional_filters_search_and_delete_exactly_over_grpc(tmp_path: Path) -> None:
    async with embedding_stack(tmp_path) as (client, _):

        async def write(ids: list[str]) -> None:
            documents = [document(i, f"note {i}", metadata_of(i)) for i in ids]
            await client.upsert_documents(
                emb.UpsertDocumentsRequest(base="nums", model="vec/mini-384", documents=documents)
            )

        await write(ALL_IDS)
        wrong: list[str] = []
        for where in filters((2.5, -0.5)):
            wanted = expected(where)
            search = emb.SearchDocumentsRequest(base="nums", query="note", top_k=len(ALL_IDS) * 2)
            search.metadata_filter.update(where)
            hits = sorted(h.document.id for h in (await client.search_documents(search)).hits)
            if hits != wanted:
                wrong.append(f"search {where}: {hits} != {wanted}")

            delete = emb.DeleteDocumentsRequest(base="nums")
            delete.metadata_filter.update(where)
            deleted = (await client.delete_documents(delete)).deleted_count
            left = await ids_stored(client, "nums")
            if left != sorted(set(ALL_IDS) - set(wanted)) or deleted != len(wanted):
                wrong.append(f"delete {where}: {deleted} deleted, {left} left; matching: {wanted}")
            await write(sorted(set(ALL_IDS) - set(left)) or [ALL_IDS[0]])
        assert not wrong, "\n".join(wrong)


async def test_a_struct_list_of_integral_and_fractional_doubles_is_a_valid_filter(tmp_path: Path) -> None:
    # Struct only has doubles: [2.5, 3.0] arrives as [2.5, 3], which Chroma alone refuses.
    async with embedding_stack(tmp_path) as (client, _):
        documents = [document(i, f"note {i}", metadata_of(i)) for i in ALL_IDS]
        await client.upsert_documents(emb.UpsertDocumentsRequest(base="mixed", documents=documents))
        search = emb.SearchDocumentsRequest(base="mixed", query="note", top_k=50)
        search.metadata_filter.update({"n": {"$in": [2.5, 3.0]}})
        hits = sorted(h.document.id for h in (await client.search_documents(search)).hits)
        assert hits == expected({"n": {"$in": [2.5, 3]}}) == ["f2.5", "f3.0", "i3"]


# -- reads agree with search ----------------------------------------------------------------------


async def test_get_and_delete_see_every_collection_search_reads(tmp_path: Path) -> None:
    async with embedding_stack(tmp_path) as (client, _):

        async def upsert(model: str, *documents: emb.Document) -> None:
            await client.upsert_documents(
                emb.UpsertDocumentsRequest(base="kb", model=model, documents=list(documents))
            )

        await upsert(
            "vec/mini-384",
            *(document(f"p{i}", f"primary note {i}", {"side": "primary"}) for i in range(5)),
            document("both", "the primary copy", {"side": "primary"}),
        )
        # A second model makes a second dimension collection: it serves reads, it is not the primary.
        await upsert(
            "vec/base-768",
            document("only768", "zebra crossing report", {"side": "secondary"}),
            document("both", "the secondary copy", {"side": "secondary"}),
        )

        found = await client.search_documents(
            emb.SearchDocumentsRequest(base="kb", query="zebra crossing report", top_k=10)
        )
        assert found.collections == ["kb_384", "kb_768"]
        assert "only768" in {h.document.id for h in found.hits}

        got = await client.get_documents(emb.GetDocumentsRequest(base="kb", ids=["only768", "both", "nope"]))
        assert [(d.id, d.text) for d in got.documents] == [
            ("only768", "zebra crossing report"),
            ("both", "the primary copy"),  # the primary's copy, as search returns it
        ]
        assert got.collection == "kb_384" and list(got.collections) == ["kb_384", "kb_768"]
        searched = await client.search_documents(
            emb.SearchDocumentsRequest(base="kb", query="the secondary copy", top_k=10)
        )
        assert {h.document.id: h.document.text for h in searched.hits}["both"] == "the primary copy"

        only = await client.get_documents(emb.GetDocumentsRequest(base="kb", ids=["both"], dimension=768))
        assert [d.text for d in only.documents] == ["the secondary copy"]
        assert list(only.collections) == ["kb_768"]

        # Paging lists every document of the base once, whichever collections hold it.
        listed, token, pages = [], "", 0
        while True:
            page = await client.get_documents(
                emb.GetDocumentsRequest(base="kb", page_size=2, page_token=token)
            )
            listed += [d.id for d in page.documents]
            pages += 1
            token = page.next_page_token
            if not token:
                break
        assert sorted(listed) == sorted(["both", "only768", *(f"p{i}" for i in range(5))])
        assert len(listed) == len(set(listed)) and pages == 4

        deleted = await client.delete_documents(
            emb.DeleteDocumentsRequest(base="kb", ids=["only768", "both"])
        )
        assert deleted.deleted_count == 2
        after = await client.get_documents(emb.GetDocumentsRequest(base="kb", ids=["only768", "both"]))
        assert not after.documents
        gone = await client.search_documents(
            emb.SearchDocumentsRequest(base="kb", query="zebra crossing report", top_k=10)
        )
        assert {h.document.id for h in gone.hits}.isdisjoint({"only768", "both"})
        counts = {c.name: c.document_count for c in (await client.list_collections()).collections}
        assert counts == {"kb_384": 5, "kb_768": 0}

        by_filter = emb.DeleteDocumentsRequest(base="kb")
        by_filter.metadata_filter.update({"side": "primary"})
        assert (await client.delete_documents(by_filter)).deleted_count == 5


@pytest.mark.parametrize("page_size", [1, 3, 100])
async def test_paging_a_base_whose_second_collection_repeats_the_first(
    tmp_path: Path, page_size: int
) -> None:
    async with embedding_stack(tmp_path) as (client, _):
        first = [document(f"a{i:02d}", f"alpha {i}", {}) for i in range(7)]
        await client.upsert_documents(
            emb.UpsertDocumentsRequest(base="kb", model="vec/mini-384", documents=first)
        )
        # The 768 collection holds the same seven documents plus two of its own, written after them.
        await client.upsert_documents(
            emb.UpsertDocumentsRequest(
                base="kb",
                model="vec/base-768",
                documents=[*first, document("z1", "zeta 1", {}), document("z2", "zeta 2", {})],
            )
        )
        listed, token = [], ""
        while True:
            page = await client.get_documents(
                emb.GetDocumentsRequest(base="kb", page_size=page_size, page_token=token)
            )
            assert len(page.documents) <= page_size
            assert page.documents or not page.next_page_token
            listed += [d.id for d in page.documents]
            token = page.next_page_token
            if not token:
                break
        assert listed == [f"a{i:02d}" for i in range(7)] + ["z1", "z2"]
