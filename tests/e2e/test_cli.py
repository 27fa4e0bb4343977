"""The `sekha` CLI as a subprocess against both services running in this test's event loop.

The router (fake provider at the network edge: chat models `alpha` and `beta`, embedding models
of 384 and 768 dimensions) and the embedding service (embedded Chroma) run in-process on port 0;
the CLI is spawned with `asyncio.create_subprocess_exec`, so the servers keep serving while it
runs. Assertions read what a user sees: stdout, stderr and the exit code.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from testkit.fake_provider import Behaviour, FakeProvider
from testkit.harness import (
    chat_model,
    embedding_config,
    embedding_model,
    openai_provider,
    router_config,
    running_embedding,
    running_router,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Stack:
    router_target: str
    embedding_target: str
    fake: FakeProvider
    chroma_path: Path | None = None


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str

    def json(self) -> object:
        return json.loads(self.stdout)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with FakeProvider() as fake:
        config = router_config(
            [
                openai_provider(
                    "primary",
                    fake.base_url,
                    [chat_model("alpha", tasks=("chat_small", "chat_smart"), price=(1.0, 2.0))],
                    priority=10,
                ),
                openai_provider(
                    "backup", fake.base_url, [chat_model("beta", price=(10.0, 20.0))], priority=20
                ),
                openai_provider(
                    "vec", fake.base_url, [embedding_model("mini-384", 384), embedding_model("base-768", 768)]
                ),
            ]
        )
        async with running_router(config) as (router_app, _):
            emb_dir = tmp_path_factory.mktemp("emb")
            emb_config = embedding_config(emb_dir, f"127.0.0.1:{router_app.port}")
            async with running_embedding(emb_config) as (emb_app, _):
                yield Stack(
                    f"127.0.0.1:{router_app.port}", f"127.0.0.1:{emb_app.port}", fake, emb_dir / "chroma"
                )


async def sekha(stack: Stack, *args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> Run:
    environ = {
        **os.environ,
        "SEKHA_ROUTER_TARGET": stack.router_target,
        "SEKHA_EMBEDDING_TARGET": stack.embedding_target,
        **(env or {}),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sekha_cli",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
        cwd=REPO,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin is not None else b""), 60)
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------- router


async def test_chat_streams_text_then_a_footer_with_provider_model_tokens_and_cost(stack: Stack) -> None:
    run = await sekha(stack, "chat", "hello there friend", "--max-tokens", "40")
    assert run.code == 0, run.stderr
    assert run.stdout.strip() == "echo: hello there friend"
    footer = run.stderr.strip().splitlines()[-1]
    assert footer.startswith("-- primary/alpha")
    assert "tokens 3 in, 4 out" in footer  # the fake counts words
    assert f"cost ${(3 * 1.0 + 4 * 2.0) / 1e6:.6f}".rstrip("0") in footer
    # it really was a stream: the fake saw a streaming request
    last = [r for r in stack.fake.requests if r.path == "/v1/chat/completions"][-1]
    assert last.json["stream"] is True

    whole = await sekha(stack, "chat", "second question", "--no-stream", "--json", "--system", "be brief")
    assert whole.code == 0, whole.stderr
    view = whole.json()
    assert isinstance(view, dict)
    assert view["text"] == "echo: second question"
    assert (view["provider_id"], view["model"]) == ("primary", "alpha")
    assert view["cost_usd"] == pytest.approx((view["input_tokens"] * 1.0 + view["output_tokens"] * 2.0) / 1e6)
    sent = [r for r in stack.fake.requests if r.path == "/v1/chat/completions"][-1].json
    assert sent["messages"][0] == {"role": "system", "content": "be brief"} and sent.get("stream") is not True


async def test_after_a_fallback_chat_names_the_provider_that_answered(stack: Stack) -> None:
    stack.fake.script("alpha", Behaviour(status=503))  # the plan's first choice fails once
    run = await sekha(stack, "chat", "who answers", "--max-tokens", "40")
    assert run.code == 0, run.stderr
    footer = run.stderr.strip().splitlines()[-1]
    assert footer.startswith("-- backup/beta") and "attempts 2" in footer

    stack.fake.script("alpha", Behaviour(status=503))
    whole = await sekha(stack, "chat", "who answers", "--no-stream", "--json")
    assert whole.code == 0, whole.stderr
    view = whole.json()
    assert isinstance(view, dict)
    assert (view["provider_id"], view["model"], view["planned"]) == ("backup", "beta", "primary/alpha")
    assert [a["outcome"] for a in view["attempts"]] == ["failed", "succeeded"]


async def test_when_every_provider_fails_the_error_line_shows_each_attempt(stack: Stack) -> None:
    dead = router_config(
        [
            openai_provider(
                "local-ollama",
                f"http://127.0.0.1:{closed_port()}",
                [chat_model("llama3.2:3b")],
                provider_type="ollama",
            )
        ]
    )
    async with running_router(dead) as (app, _):
        run = await sekha(stack, "--router", f"127.0.0.1:{app.port}", "chat", "hi", "--timeout", "20")
    assert run.code == 7, run.stderr
    [line] = run.stderr.strip().splitlines()
    assert line.startswith("error: UNAVAILABLE: ")
    # provider, model and cause of every attempt, as the error's details carry them
    assert "[attempts: local-ollama/llama3.2:3b: connection refused or host unreachable" in line


async def test_route_prints_the_decision_with_reason_fallbacks_and_estimate(stack: Stack) -> None:
    before = stack.fake.count("/v1/chat/completions")
    text = await sekha(stack, "route", "--task", "chat_smart", "--max-cost", "0.05", "--prompt", "hi there")
    assert text.code == 0, text.stderr
    assert "chosen     primary/alpha" in text.stdout and "fallbacks  backup/beta" in text.stdout
    assert "reason     task chat_smart" in text.stdout and "estimate   " in text.stdout

    # beta's 512 output tokens at $20/M alone cost $0.01: a ceiling of 0.01 rejects it, and says why
    capped = await sekha(stack, "route", "--task", "chat_smart", "--max-cost", "0.01")
    assert "fallbacks  -" in capped.stdout
    assert "rejected   backup/beta: estimated cost exceeds max_cost" in capped.stdout

    preferred = await sekha(stack, "route", "--model", "backup/beta", "--json")
    assert preferred.code == 0, preferred.stderr
    decision = preferred.json()
    assert isinstance(decision, dict)
    assert decision["chosen"]["key"] == "backup/beta" and decision["task"] == "chat_smart"
    assert decision["chosen"]["estimated_cost_usd"] > 0 and decision["reason"]
    assert stack.fake.count("/v1/chat/completions") == before  # routing calls no provider


async def test_models_json_lists_every_configured_model(stack: Stack) -> None:
    run = await sekha(stack, "models", "--json")
    assert run.code == 0, run.stderr
    listing = run.json()
    assert isinstance(listing, dict)
    by_key = {m["key"]: m for m in listing["models"]}
    assert set(by_key) == {"primary/alpha", "backup/beta", "vec/mini-384", "vec/base-768"}
    assert by_key["vec/base-768"]["embedding_dimension"] == 768
    assert by_key["primary/alpha"]["tasks"] == ["chat_small", "chat_smart"]
    assert by_key["backup/beta"]["price"] == {
        "input_usd_per_million_tokens": 10.0,
        "output_usd_per_million_tokens": 20.0,
    }

    paged = await sekha(stack, "models", "--json", "--page-size", "1")  # four pages of one
    assert paged.json() == listing

    table = await sekha(stack, "models", "--task", "embedding")
    assert table.code == 0
    assert table.stdout.splitlines()[0].startswith("MODEL")
    assert "vec/mini-384" in table.stdout and "primary/alpha" not in table.stdout


async def test_status_json_reports_providers_breakers_health_and_spend(stack: Stack) -> None:
    run = await sekha(stack, "status", "--json")
    assert run.code == 0, run.stderr
    status = run.json()
    assert isinstance(status, dict)
    assert [p["provider_id"] for p in status["providers"]] == ["primary", "backup", "vec"]
    assert all(p["breaker"]["state"] == "closed" and p["enabled"] for p in status["providers"])
    assert status["router"]["health"] == "SERVING" and status["embedding"]["health"] == "SERVING"
    spend = status["spend"]
    assert spend == {"available": False, "reason": "UNIMPLEMENTED"} or spend["available"] is True

    table = await sekha(stack, "status")
    assert table.code == 0
    assert "spend" in table.stdout and "primary" in table.stdout and "closed" in table.stdout


# ---------------------------------------------------------------------------------- embedding


async def test_embed_upsert_search_collections_export_import_and_migrate(
    stack: Stack, tmp_path: Path
) -> None:
    docs = [
        {
            "id": f"doc-{i:02d}",
            "text": f"note {i} about subject {i % 4}",
            "metadata": {"n": i, "even": i % 2 == 0},
        }
        for i in range(30)
    ]
    upsert = await sekha(
        stack,
        "embed",
        "upsert",
        "kb",
        "--file",
        str(write_jsonl(tmp_path / "docs.jsonl", docs)),
        "--model",
        "vec/mini-384",
        "--batch",
        "8",
    )
    assert upsert.code == 0, upsert.stderr
    assert upsert.stdout.strip() == "upserted 30 documents into kb (kb_384)"
    assert "30/30 docs" in upsert.stderr  # the progress bar's final line

    search = await sekha(stack, "embed", "search", "kb", docs[7]["text"], "--top-k", "3", "--json")  # type: ignore[arg-type]
    assert search.code == 0, search.stderr
    found = search.json()
    assert isinstance(found, dict)
    assert found["collections"] == ["kb_384"]
    assert found["hits"][0]["id"] == "doc-07" and found["hits"][0]["metadata"] == {"even": False, "n": 7}

    table = await sekha(stack, "embed", "search", "kb", docs[7]["text"], "--top-k", "3")  # type: ignore[arg-type]
    assert table.code == 0, table.stderr
    header = table.stdout.splitlines()[1].split()
    assert header[:4] == ["RANK", "FUSION", "DISTANCE", "ID"]
    first = table.stdout.splitlines()[2].split()
    assert first[3] == "doc-07" and float(first[2]) == pytest.approx(0.0, abs=1e-4)  # the very text
    assert "not a similarity" in table.stderr and "lower is closer" in table.stderr

    filtered = await sekha(
        stack, "embed", "search", "kb", "note", "--top-k", "30", "--filter", '{"even": true}', "--json"
    )
    hits = filtered.json()["hits"]  # type: ignore[index]
    assert len(hits) == 15 and all(h["metadata"]["even"] for h in hits)

    export_path = tmp_path / "kb.jsonl"
    export = await sekha(
        stack, "embed", "export", "kb", "--out", str(export_path), "--with-vectors", "--page-size", "7"
    )
    assert export.code == 0, export.stderr
    exported = [json.loads(line) for line in export_path.read_text().splitlines()]
    assert sorted(e["id"] for e in exported) == [d["id"] for d in docs]
    assert all(len(e["embedding"]) == 384 for e in exported)
    assert {e["id"]: e["metadata"] for e in exported}["doc-04"] == {"even": True, "n": 4}

    imported = await sekha(
        stack, "embed", "import", "kb-copy", "--file", str(export_path), "--model", "vec/mini-384"
    )
    assert imported.code == 0, imported.stderr
    assert "ignored" in imported.stderr and "re-embed" not in imported.stdout
    collections = await sekha(stack, "embed", "collections", "--json")
    counts = {c["name"]: c["document_count"] for c in collections.json()["collections"]}  # type: ignore[index]
    assert counts == {"kb_384": 30, "kb-copy_384": 30}
    roundtrip = await sekha(stack, "embed", "export", "kb-copy")
    assert sorted(json.loads(line)["text"] for line in roundtrip.stdout.splitlines()) == sorted(
        str(d["text"]) for d in docs
    )

    migrate = await sekha(
        stack,
        "embed",
        "migrate",
        "kb",
        "--model",
        "vec/base-768",
        "--batch-size",
        "10",
        "--wait",
        "--poll-interval",
        "0.05",
        "--json",
    )
    assert migrate.code == 0, migrate.stderr
    migration = migrate.json()
    assert isinstance(migration, dict)
    assert migration["state"] == "completed" and migration["target_collection"] == "kb_768"
    assert migration["migrated_documents"] >= 30
    after = await sekha(stack, "embed", "collections", "--base", "kb", "--json")
    serving = {c["name"]: c["serving_reads"] for c in after.json()["collections"]}  # type: ignore[index]
    assert serving == {"kb_384": False, "kb_768": True}
    table = await sekha(stack, "embed", "collections", "--base", "kb")
    assert "kb_768" in table.stdout and "vec/base-768" in table.stdout


async def test_upsert_rejects_a_bad_line_before_sending_anything(stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": 3}\n', encoding="utf-8")
    run = await sekha(stack, "embed", "upsert", "never", "--file", str(path))
    assert run.code == 1
    assert run.stderr.strip() == f"error: {path}:2: 'text' must be a string"
    listing = await sekha(stack, "embed", "collections", "--base", "never", "--json")
    assert listing.json() == {"collections": []}
    missing = await sekha(stack, "embed", "upsert", "never", "--file", str(tmp_path / "nope.jsonl"))
    assert missing.code == 1 and "cannot be read" in missing.stderr


async def test_embed_adopt_registers_a_v1_collection_that_search_then_reads(stack: Stack) -> None:
    import chromadb
    from chromadb.config import Settings

    from testkit.fake_provider import deterministic_vector

    # A v1 collection: no dimension suffix, vectors written by the model the fake serves as mini-384.
    texts = {"v1-a": "minutes of the budget meeting", "v1-b": "holiday rota for August"}
    chroma = chromadb.PersistentClient(
        path=str(stack.chroma_path), settings=Settings(anonymized_telemetry=False)
    )
    legacy = chroma.create_collection("conversations", embedding_function=None)  # type: ignore[arg-type]
    legacy.add(
        ids=list(texts),
        embeddings=[deterministic_vector(t, 384) for t in texts.values()],  # type: ignore[arg-type]
        documents=list(texts.values()),
    )

    adopted = await sekha(
        stack, "embed", "adopt", "conversations", "--base", "legacy", "--model", "vec/mini-384"
    )
    assert adopted.code == 0, adopted.stderr
    assert adopted.stdout.strip() == (
        "adopted conversations into base legacy as legacy_384: dimension 384, model vec/mini-384, 2 documents"
    )
    search = await sekha(stack, "embed", "search", "legacy", texts["v1-b"], "--top-k", "1", "--json")
    assert [h["id"] for h in search.json()["hits"]] == ["v1-b"]  # type: ignore[index]
    again = await sekha(
        stack, "embed", "adopt", "conversations", "--base", "legacy2", "--model", "vec/mini-384"
    )
    assert again.code == 4 and again.stderr.startswith("error: ALREADY_EXISTS")


# --------------------------------------------------------------------------------------- admin


async def test_keys_hash_from_argument_stdin_and_generate(stack: Stack) -> None:
    expected = "sha256:" + hashlib.sha256(b"sk-sekha-example").hexdigest()
    direct = await sekha(stack, "keys", "hash", "sk-sekha-example")
    assert (direct.code, direct.stdout.strip()) == (0, expected)
    piped = await sekha(stack, "keys", "hash", stdin="sk-sekha-example\n")
    assert piped.stdout.strip() == expected
    generated = await sekha(stack, "keys", "hash", "--generate", "--json")
    pair = generated.json()
    assert isinstance(pair, dict)
    assert pair["api_key"].startswith("sk-sekha-") and len(pair["api_key"]) > 40
    assert pair["hash"] == "sha256:" + hashlib.sha256(pair["api_key"].encode()).hexdigest()
    empty = await sekha(stack, "keys", "hash", stdin="\n")
    assert empty.code == 1


async def test_config_check_ok_and_bad_for_both_services(stack: Stack, tmp_path: Path) -> None:
    good = tmp_path / "router.yaml"
    good.write_text(
        "providers:\n"
        "  - id: local-llm\n    type: openai_compatible\n    base_url: http://127.0.0.1:9/v1\n"
        "    models:\n      - id: m1\n        tasks: [chat_smart]\n",
        encoding="utf-8",
    )
    ok = await sekha(stack, "config", "check", str(good))
    assert ok.code == 0, ok.stderr
    assert "OK, 1 provider(s), 1 model(s)" in ok.stdout

    bad = tmp_path / "bad-router.yaml"
    bad.write_text(good.read_text().replace("chat_smart", "chat_fancy") + "retry:\n  max_attempts: 0\n")
    failed = await sekha(stack, "config", "check", str(bad))
    assert failed.code == 1
    assert "providers[0].models[0].tasks[0]" in failed.stderr and "retry.max_attempts" in failed.stderr
    assert "Traceback" not in failed.stderr

    embedding = tmp_path / "embedding.yaml"
    embedding.write_text("chroma:\n  mode: http\n  host: chroma\n  port: 8000\n", encoding="utf-8")
    ok_embedding = await sekha(stack, "config", "check", str(embedding))
    assert ok_embedding.code == 0, ok_embedding.stderr
    assert "OK, embedding service" in ok_embedding.stdout and "http chroma:8000" in ok_embedding.stdout
    embedding.write_text("chroma:\n  mode: carrier-pigeon\n  port: 99999\n", encoding="utf-8")
    bad_embedding = await sekha(stack, "config", "check", str(embedding))
    assert bad_embedding.code == 1
    assert "chroma.mode" in bad_embedding.stderr and "chroma.port" in bad_embedding.stderr


# --------------------------------------------------------------------------------- exit codes


async def test_unavailable_router_is_one_line_and_exit_code_7(stack: Stack) -> None:
    run = await sekha(stack, "--router", f"127.0.0.1:{closed_port()}", "models", "--timeout", "5")
    assert run.code == 7
    assert run.stderr.startswith("error: UNAVAILABLE: ")
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr


async def test_invalid_argument_not_found_and_failed_precondition_have_their_own_codes(stack: Stack) -> None:
    invalid = await sekha(stack, "chat", "hi", "--max-tokens", "1000000")
    assert invalid.code == 2, invalid.stderr
    assert invalid.stderr.startswith("error: INVALID_ARGUMENT: ") and "max_tokens" in invalid.stderr

    not_found = await sekha(stack, "embed", "migrate", "no-such-base", "--model", "vec/base-768")
    assert not_found.code == 3, not_found.stderr
    assert not_found.stderr.startswith("error: NOT_FOUND: ")

    too_cheap = await sekha(stack, "route", "--max-cost", "0.0000000001")
    assert too_cheap.code == 4, too_cheap.stderr
    assert too_cheap.stderr.startswith("error: FAILED_PRECONDITION: ")

    usage = await sekha(stack, "route", "--task", "chat_fancy")
    assert usage.code == 1 and "invalid choice" in usage.stderr


async def test_api_key_from_keys_hash_opens_an_auth_enabled_router_and_a_wrong_one_exits_6(
    stack: Stack,
) -> None:
    generated = await sekha(stack, "keys", "hash", "--generate", "--json")
    pair = generated.json()
    assert isinstance(pair, dict)
    config = router_config(
        [openai_provider("primary", stack.fake.base_url, [chat_model("alpha")])],
        auth={"enabled": True, "keys": [{"id": "cli-test", "hash": pair["hash"]}]},
    )
    async with running_router(config) as (app, _):
        guarded = Stack(f"127.0.0.1:{app.port}", stack.embedding_target, stack.fake)
        anonymous = await sekha(guarded, "models", "--json")
        assert anonymous.code == 6 and anonymous.stderr.startswith("error: UNAUTHENTICATED")
        wrong = await sekha(guarded, "--api-key", "sk-sekha-wrong", "models")
        assert wrong.code == 6
        allowed = await sekha(guarded, "models", "--json", env={"SEKHA_API_KEY": pair["api_key"]})
        assert allowed.code == 0, allowed.stderr
        assert [m["key"] for m in allowed.json()["models"]] == ["primary/alpha"]  # type: ignore[index]


async def test_mutual_tls_flags_reach_a_tls_router(stack: Stack, tmp_path: Path) -> None:
    from testkit.certs import CertificateAuthority

    ca = CertificateAuthority.create("cli test CA")
    ca_file = ca.write(tmp_path / "ca.pem")
    server = ca.issue("server", tmp_path / "server")
    client = ca.issue("client", tmp_path / "client", client=True)
    config = router_config(
        [openai_provider("primary", stack.fake.base_url, [chat_model("alpha")])],
        server={
            "tls": {
                "cert_file": str(server.cert_file),
                "key_file": str(server.key_file),
                "client_ca_file": str(ca_file),
            }
        },
    )
    async with running_router(config) as (app, _):
        tls_stack = Stack(f"127.0.0.1:{app.port}", stack.embedding_target, stack.fake)
        mutual = await sekha(
            tls_stack, "models", "--json", "--ca-cert", str(ca_file),
            "--client-cert", str(client.cert_file), "--client-key", str(client.key_file),
        )  # fmt: skip
        assert mutual.code == 0, mutual.stderr
        assert [m["key"] for m in mutual.json()["models"]] == ["primary/alpha"]  # type: ignore[index]
        no_client_cert = await sekha(tls_stack, "models", "--ca-cert", str(ca_file), "--timeout", "5")
        assert no_client_cert.code == 7 and no_client_cert.stderr.startswith("error: UNAVAILABLE")
        half = await sekha(
            tls_stack, "models", "--ca-cert", str(ca_file), "--client-cert", str(client.cert_file)
        )
        assert half.code == 1 and "go together" in half.stderr
