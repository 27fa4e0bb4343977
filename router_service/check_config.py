"""`check-config`: validate a Router configuration file and summarise what it routes to.

Prints every problem (one line each, with its YAML path) and returns a non-zero exit code, or
prints the models the router would serve and returns 0. Secrets are never printed.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from router_service.config import RouterConfig
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
    model_info: object | None = None,
) -> int:
    """Validate the file at `path` (else $SEKHA_CONFIG, else the default); return the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        config = RouterConfig.load(path, environ=environ, model_info=model_info)
    except ConfigError as exc:
        where = exc.source or (str(path) if path else "configuration")
        count = len(exc.errors)
        print(f"{where}: {count} problem{'s' if count != 1 else ''}", file=err)
        for line in exc.errors:
            print(f"  {line}", file=err)
        return EXIT_INVALID

    from router_service.model_registry import Registry

    registry = Registry.from_config(config, model_info)  # type: ignore[arg-type]
    where = str(path) if path else "configuration"
    print(f"{where}: OK, {len(config.providers)} provider(s), {len(registry.entries)} model(s)", file=out)
    for entry in registry.entries:
        tasks = ",".join(sorted(str(t) for t in entry.tasks))
        if entry.price is None:
            price = "price unknown (skipped when a request sets max_cost)"
        else:
            price = (
                f"${entry.price.input_per_million:g}/${entry.price.output_per_million:g} per M tokens "
                f"({entry.price_source})"
            )
        extra = f" dim={entry.embedding_dimension}" if entry.embedding_dimension else ""
        disabled = registry.disabled_reason(entry.provider_id)
        state = f" [{disabled}]" if disabled else ""
        print(f"  {entry.key:<40} p{entry.priority:<3} {tasks:<30} {price}{extra}{state}", file=out)
    return EXIT_OK
