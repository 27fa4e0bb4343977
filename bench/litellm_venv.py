"""The LiteLLM proxy for comparison, installed into its own virtual environment.

The proxy's extra dependencies (FastAPI, uvicorn, ...) must not leak into the project's
environment, so the harness keeps a separate venv at ``bench/.venv-litellm`` with
``litellm[proxy]`` at the same version the router uses, installed from PyPI by pip. The venv
is reused between runs once it holds that version; when installing fails, the reason is
returned and the rest of the benchmark runs with the proxy marked unavailable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.procs import ROOT

LITELLM_VERSION = "1.106.2"
VENV_DIR = ROOT / "bench" / ".venv-litellm"
INSTALL_TIMEOUT_S = 1200.0
MASTER_KEY = "sk-bench-master"
_PROXY_PACKAGES = ("litellm", "fastapi", "uvicorn")


@dataclass(frozen=True)
class LitellmInstall:
    """Where the proxy lives, or why it is unavailable (``reason`` set, paths unusable)."""

    venv: Path
    version: str | None
    installed_now: bool = False
    install_s: float | None = None
    reason: str | None = None

    @property
    def available(self) -> bool:
        return self.reason is None

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def proxy_command(self) -> Path:
        return self.venv / "bin" / "litellm"


def _installed_versions(python: Path) -> dict[str, str | None]:
    script = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        f"for name in {list(_PROXY_PACKAGES)!r}:\n"
        "    try:\n"
        "        out[name] = m.version(name)\n"
        "    except m.PackageNotFoundError:\n"
        "        out[name] = None\n"
        "print(json.dumps(out))\n"
    )
    completed = subprocess.run(
        [str(python), "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    if completed.returncode != 0:
        return {}
    return json.loads(completed.stdout)


def _ready(venv: Path) -> str | None:
    """The installed litellm version when the venv is complete, else None."""
    python = venv / "bin" / "python"
    if not python.exists() or not (venv / "bin" / "litellm").exists():
        return None
    versions = _installed_versions(python)
    if versions.get("litellm") != LITELLM_VERSION or not all(versions.get(p) for p in _PROXY_PACKAGES):
        return None
    return LITELLM_VERSION


def ensure_litellm(log_path: Path, venv: Path = VENV_DIR, allow_install: bool = True) -> LitellmInstall:
    """Reuse the cached venv, or create it and ``pip install 'litellm[proxy]==VERSION'``."""
    import time

    version = _ready(venv)
    if version is not None:
        return LitellmInstall(venv=venv, version=version)
    if not allow_install:
        return LitellmInstall(venv=venv, version=None, reason="litellm proxy venv missing (install disabled)")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    steps = []
    if not (venv / "bin" / "python").exists():
        steps.append([sys.executable, "-m", "venv", str(venv)])
    steps.append(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            f"litellm[proxy]=={LITELLM_VERSION}",
        ]
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    with log_path.open("a", encoding="utf-8") as log:
        for step in steps:
            log.write(f"$ {' '.join(step)}\n")
            log.flush()
            try:
                completed = subprocess.run(
                    step,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=INSTALL_TIMEOUT_S,
                    env=env,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                return LitellmInstall(venv=venv, version=None, reason=f"{' '.join(step[:4])}: {exc}")
            if completed.returncode != 0:
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
                return LitellmInstall(
                    venv=venv,
                    version=None,
                    reason=f"`{' '.join(step[-3:])}` exited with {completed.returncode}:\n{tail}",
                )
    version = _ready(venv)
    if version is None:
        return LitellmInstall(
            venv=venv, version=None, reason=f"litellm {LITELLM_VERSION} not found after install"
        )
    return LitellmInstall(
        venv=venv, version=version, installed_now=True, install_s=round(time.perf_counter() - started, 1)
    )


def proxy_config(fake_base_url: str, chat_model: str, embed_model: str) -> dict[str, object]:
    """A proxy config serving the benchmark's chat and embedding models from the fake provider."""

    def entry(name: str) -> dict[str, object]:
        return {
            "model_name": name,
            "litellm_params": {
                "model": f"openai/{name}",
                "api_base": f"{fake_base_url}/v1",
                "api_key": "sk-fake",
            },
        }

    return {
        "model_list": [entry(chat_model), entry(embed_model)],
        "general_settings": {"master_key": MASTER_KEY},
    }


def proxy_env() -> dict[str, str]:
    """The proxy's environment: ours minus anything that would let it import our packages."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    return env
