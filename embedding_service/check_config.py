"""`check-config`: validate an Embedding service configuration file and summarise it.

Prints every problem (one line each, with its YAML path) and returns a non-zero exit code, or
prints where the service would listen, which router it embeds through and where Chroma is, and
returns 0. Secrets are never printed. `sekha-embedding check-config`, `sekha-embedding reload
--config` and the CLI's `sekha config check` all run this one check.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from embedding_service.config import EmbeddingConfig
from sekha_runtime.configloader import ConfigError

__all__ = ["check_config_main"]

EXIT_OK = 0
EXIT_INVALID = 1


def check_config_main(
    path: str | Path | None,
    *,
    environ: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Validate the file at `path` (else $SEKHA_EMBEDDING_CONFIG, else the default); return the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    env = os.environ if environ is None else environ
    source = path if path else env.get("SEKHA_EMBEDDING_CONFIG")
    where = str(source) if source else "configuration"
    try:
        config = EmbeddingConfig.load(source, environ=environ)
    except ConfigError as exc:
        count = len(exc.errors)
        print(f"{exc.source or where}: {count} problem{'s' if count != 1 else ''}", file=err)
        for line in exc.errors:
            print(f"  {line}", file=err)
        return EXIT_INVALID
    chroma = config.chroma
    store = f"http {chroma.host}:{chroma.port}" if chroma.mode == "http" else f"persistent {chroma.path}"
    print(f"{where}: OK, embedding service", file=out)
    print(f"  listen   {config.server.host}:{config.server.port}", file=out)
    print(f"  router   {config.router.target}", file=out)
    print(f"  chroma   {store} (space {chroma.hnsw.space})", file=out)
    print(f"  model    {config.defaults.model or 'the router chooses for a new base'}", file=out)
    return EXIT_OK
