"""The Go toolchain the tests use: Debian's Go, protoc plugins and libraries, built offline.

Go code is built in GOPATH mode (GO111MODULE=off) against the sources Debian's golang-*-dev
packages install under /usr/share/gocode, so no module proxy is needed. The GOPATH is a
directory outside the repo whose src/<module path> is a symlink to clients/go; its path is
stable per checkout so the build cache (GOCACHE, also outside the repo) hits across runs.
The packages are installed by .ci/run and listed in clients/go/README.md.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GO_DIR = ROOT / "clients" / "go"
# The import path of clients/go: the prefix of the protos' `go_package` options.
GO_MODULE = "sekha.dev/gateway/clients/go"
DEBIAN_GOPATH = Path("/usr/share/gocode")
DEBIAN_PACKAGES = (
    "golang-go",
    "protoc-gen-go",
    "protoc-gen-go-grpc",
    "golang-google-grpc-dev",
    "golang-google-genproto-dev",
    "golang-google-protobuf-dev",
    "golang-github-golang-protobuf-1-5-dev",
)
_INSTALL_HINT = "install Debian's Go packages: apt-get install -y " + " ".join(DEBIAN_PACKAGES)


def require_tool(name: str) -> str:
    """The path of `name`; a missing tool fails the test (CI installs them), it never skips it."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is required for the Go client tests: {_INSTALL_HINT}")
    return path


def generate_go(out_dir: Path) -> None:
    """Generate the Go code for every proto into out_dir, exactly as `make proto` does."""
    protos = sorted(str(p.relative_to(ROOT / "protos")) for p in (ROOT / "protos").rglob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'protos'}",
            f"--plugin=protoc-gen-go={require_tool('protoc-gen-go')}",
            f"--plugin=protoc-gen-go-grpc={require_tool('protoc-gen-go-grpc')}",
            f"--go_out={out_dir}",
            f"--go_opt=module={GO_MODULE}",
            f"--go-grpc_out={out_dir}",
            f"--go-grpc_opt=module={GO_MODULE}",
            *protos,
        ],
        check=True,
        cwd=ROOT,
        timeout=120,
    )


def go_workspace() -> tuple[Path, dict[str, str]]:
    """The directory to run `go` in (clients/go seen through the GOPATH) and its environment."""
    require_tool("go")
    if not (DEBIAN_GOPATH / "src" / "google.golang.org" / "grpc").is_dir():
        raise RuntimeError(f"grpc-go sources are missing under {DEBIAN_GOPATH}: {_INSTALL_HINT}")
    base = Path(tempfile.gettempdir())
    checkout = hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]
    gopath = base / f"sekha-gopath-{checkout}"
    package_dir = gopath / "src" / GO_MODULE
    package_dir.parent.mkdir(parents=True, exist_ok=True)
    if not package_dir.is_symlink() or package_dir.resolve() != GO_DIR:
        staged = package_dir.with_name(f".{package_dir.name}.{os.getpid()}")
        staged.unlink(missing_ok=True)
        staged.symlink_to(GO_DIR, target_is_directory=True)
        os.replace(staged, package_dir)
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"{gopath}{os.pathsep}{DEBIAN_GOPATH}",
        "GOCACHE": os.environ.get("GOCACHE") or str(base / "sekha-go-build-cache"),
        "GOFLAGS": "",
        # Nothing may be fetched: a missing package fails the build instead of reaching out.
        "GOPROXY": "off",
        # go resolves `./...` from $PWD, which must name the path inside the GOPATH, not the
        # symlink's target.
        "PWD": str(package_dir),
    }
    return package_dir, env


def run_go(args: list[str], timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    """Run `go ARGS` in the workspace; the output is returned, a failure raises with it."""
    cwd, env = go_workspace()
    result = subprocess.run(
        ["go", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s
    )
    if result.returncode != 0:
        raise AssertionError(f"go {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result
