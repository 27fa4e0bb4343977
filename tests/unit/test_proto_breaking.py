"""`buf breaking` (buf.yaml's FILE rules) holds the protos to the released contract and to the
previous commit's, so a change that would break generated clients fails `make test`.

The released contract is the committed image protos/baseline/contract.binpb. Refresh it with
`make proto-baseline` when a contract version is released, so the fields added since are
protected against removal too (between releases only the HEAD~1 check guards them, one commit
deep). Refresh only while these tests pass against the old image: a deliberate break is a new
package version (sekha.router.v2 beside v1), never a new baseline.

One change the FILE rules report is exempt: setting `go_package` on a file that had none. It
breaks no Go client, since none could be generated before (the contract gained go_package in
the commit that added clients/go, after the protos had been published without it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
BASELINE = PROTOS / "baseline" / "contract.binpb"
BUF = Path(sys.executable).parent / "buf"
ROUTER_PROTO = Path("sekha/router/v1/router_service.proto")


def _buf(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BUF), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def _build_image(source: str, out: Path) -> Path:
    result = _buf("build", source, "--exclude-source-info", "-o", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def _files_without_go_package(image: Path) -> set[str]:
    # A buf image is wire-compatible with FileDescriptorSet.
    files = descriptor_pb2.FileDescriptorSet.FromString(image.read_bytes()).file
    return {f.name for f in files if not f.options.HasField("go_package")}


def breaking_changes(protos: Path, against: Path) -> list[dict[str, Any]]:
    """What `buf breaking` reports for `protos` against the image `against`, less the exemption."""
    result = _buf("breaking", str(protos), "--against", str(against), "--error-format", "json")
    # buf exits 100 when it found breaking changes; any other failure means nothing was checked.
    assert result.returncode in (0, 100), result.stdout + result.stderr
    found = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert (result.returncode == 100) == bool(found), result.stdout + result.stderr
    first_go_package = _files_without_go_package(against)
    return [
        change
        for change in found
        if not (
            change["type"] == "FILE_SAME_GO_PACKAGE"
            and (ROOT / change["path"]).resolve().relative_to(protos.resolve()).as_posix() in first_go_package
        )
    ]


def test_protos_keep_the_released_contract() -> None:
    assert breaking_changes(PROTOS, BASELINE) == []


def test_protos_keep_the_previous_commits_contract(tmp_path: Path) -> None:
    head = subprocess.run(["git", "rev-parse", "--verify", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    assert head.returncode == 0, f"not a git checkout: {head.stderr}"
    parent = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", "HEAD~1^{commit}"], cwd=ROOT, capture_output=True
    )
    if parent.returncode != 0:
        pytest.skip("HEAD has no parent commit (the first commit, or a clone of depth 1)")
    previous = _build_image(".git#ref=HEAD~1,subdir=protos", tmp_path / "previous.binpb")
    assert breaking_changes(PROTOS, previous) == []


def _edited_protos(tmp_path: Path, pattern: str, replacement: str) -> Path:
    copy = tmp_path / "protos"
    shutil.copytree(PROTOS, copy, ignore=shutil.ignore_patterns("baseline"))
    proto = copy / ROUTER_PROTO
    text, count = re.subn(pattern, replacement, proto.read_text(), flags=re.MULTILINE)
    assert count == 1, f"{pattern!r} matched {count} times"
    proto.write_text(text)
    return copy


@pytest.mark.parametrize(
    ("pattern", "replacement", "rule", "named"),
    [
        # ChatResponse.text moves from number 2 to 90 (a free number): old clients would read nothing.
        (r"^  string text = 2;$", "  string text = 90;", "FIELD_NO_DELETE", '"text"'),
        # ChatResponse.finish_reason is removed.
        (r"^  FinishReason finish_reason = 3;$", "", "FIELD_NO_DELETE", '"finish_reason"'),
        # Usage.input_tokens narrows from int64 to int32.
        (r"^  int64 input_tokens = 1;$", "  int32 input_tokens = 1;", "FIELD_SAME_TYPE", '"input_tokens"'),
        # A go_package that existed changes: Go clients' imports would break.
        (
            r'^option go_package = "[^"]+";$',
            'option go_package = "elsewhere/routerv1";',
            "FILE_SAME_GO_PACKAGE",
            "",
        ),
    ],
    ids=["renumbered", "removed", "retyped", "go-package-moved"],
)
def test_the_check_reports_a_breaking_change(
    tmp_path: Path, pattern: str, replacement: str, rule: str, named: str
) -> None:
    changes = breaking_changes(_edited_protos(tmp_path, pattern, replacement), BASELINE)
    assert [c["type"] for c in changes] == [rule], changes
    assert named in changes[0]["message"], changes


def test_the_check_accepts_an_added_field(tmp_path: Path) -> None:
    added = _edited_protos(
        tmp_path,
        r"^  string response_model = 8;$",
        "  string response_model = 8;\n  // A field added later.\n  string added_later = 99;",
    )
    assert breaking_changes(added, BASELINE) == []


def test_a_first_go_package_is_exempt_and_only_that(tmp_path: Path) -> None:
    """Against the contract as published without go_package, today's protos pass."""
    copy = tmp_path / "without_go_package"
    shutil.copytree(PROTOS, copy, ignore=shutil.ignore_patterns("baseline"))
    for proto in copy.rglob("*.proto"):
        proto.write_text(re.sub(r'^option go_package = "[^"]+";\n', "", proto.read_text(), flags=re.M))
    published = _build_image(str(copy), tmp_path / "published.binpb")
    assert _files_without_go_package(published) >= {str(ROUTER_PROTO)}
    raw = _buf("breaking", str(PROTOS), "--against", str(published), "--error-format", "json")
    assert raw.returncode == 100 and "FILE_SAME_GO_PACKAGE" in raw.stdout, "buf itself reports it"
    assert breaking_changes(PROTOS, published) == []
    # The exemption hides nothing else: a field removed as well is still reported.
    removed = _edited_protos(tmp_path, r"^  FinishReason finish_reason = 3;$", "")
    assert [c["type"] for c in breaking_changes(removed, published)] == ["FIELD_NO_DELETE"]
