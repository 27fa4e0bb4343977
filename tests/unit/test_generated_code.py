"""The committed generated code is exactly what `make proto` produces from protos/."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "clients" / "python"


@pytest.mark.subprocess
def test_committed_code_matches_a_fresh_generation(tmp_path: Path) -> None:
    protos = sorted(str(p.relative_to(ROOT / "protos")) for p in (ROOT / "protos").rglob("*.proto"))
    assert protos, "no protos found"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'protos'}",
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            *protos,
        ],
        check=True,
        cwd=ROOT,
    )
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert len(fresh) == 3 * len(protos)
    stale = [str(rel) for rel in fresh if not filecmp.cmp(tmp_path / rel, GENERATED / rel, shallow=False)]
    assert not stale, f"run `make proto`: generated code differs for {stale}"


def test_generated_modules_import_and_expose_the_services() -> None:
    from sekha.embedding.v1 import embedding_service_pb2 as emb
    from sekha.router.v1 import router_service_pb2 as rt

    router_rpcs = {m.name for m in rt.DESCRIPTOR.services_by_name["RouterService"].methods}
    assert router_rpcs >= {"Route", "Chat", "StreamChat", "Embed", "ListModels", "GetProviderStatus"}
    embedding_rpcs = {m.name for m in emb.DESCRIPTOR.services_by_name["EmbeddingService"].methods}
    assert embedding_rpcs >= {
        "UpsertDocuments",
        "GetDocuments",
        "DeleteDocuments",
        "SearchDocuments",
        "ListCollections",
        "DeleteCollection",
        "StartMigration",
        "GetMigration",
    }
