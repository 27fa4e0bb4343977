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
