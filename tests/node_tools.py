"""The Node toolchain the tests use: `npm ci` in clients/node once per lock file."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NODE_DIR = ROOT / "clients" / "node"


def ensure_node_modules() -> Path:
    """Install clients/node's locked packages (skipped when the lock file did not change)."""
    if shutil.which("npm") is None:
        raise RuntimeError("npm is required for the Node client tests (Node.js 20 with npm)")
    lock = NODE_DIR / "package-lock.json"
    stamp = NODE_DIR / "node_modules" / ".sekha-lock-sha256"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text() != digest:
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            check=True,
            timeout=300,
        )
        stamp.write_text(digest)
    return NODE_DIR / "node_modules"


async def run_npm_script(script: str, env: dict[str, str], timeout_s: float = 120) -> tuple[int, str]:
    """`npm run <script>` in clients/node on an asyncio subprocess (so the servers under test keep
    serving on the caller's loop); its exit code and combined output."""
    import asyncio

    process = await asyncio.create_subprocess_exec(
        "npm",
        "run",
        "--silent",
        script,
        cwd=NODE_DIR,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=timeout_s)
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")
