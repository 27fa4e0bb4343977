"""The committed Go code in clients/go is exactly what `make proto` generates from protos/."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from tests.go_tools import GO_DIR, generate_go

pytestmark = [pytest.mark.subprocess]


def test_committed_go_code_matches_a_fresh_generation(tmp_path: Path) -> None:
    generate_go(tmp_path)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.pb.go"))
    # Two files per proto: messages (protoc-gen-go) and service stubs (protoc-gen-go-grpc).
    assert len(fresh) == 2 * len(list((GO_DIR.parents[1] / "protos").rglob("*.proto")))
    committed = sorted(p.relative_to(GO_DIR) for p in GO_DIR.rglob("*.pb.go"))
    assert committed == fresh, "run `make proto`: clients/go has missing or stale generated files"
    stale = [str(rel) for rel in fresh if not filecmp.cmp(tmp_path / rel, GO_DIR / rel, shallow=False)]
    assert not stale, f"run `make proto`: generated Go code differs for {stale}"
