"""The README's first-time path works as written.

Every config block it shows is a valid router config, every shell block holds one command per
line (a `|` in a pasted line runs as a pipe, so it never means "or"), and the steps a new user
needs are there: reaching the venv's `sekha`, pulling the default model, SEKHA_CONFIG.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from router_service.config import RouterConfig

README = Path(__file__).resolve().parents[2] / "README.md"
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _blocks(language: str) -> list[str]:
    return [body for lang, body in _BLOCK.findall(README.read_text(encoding="utf-8")) if lang == language]


def _config_blocks() -> list[str]:
    return [block for block in _blocks("yaml") if "providers:" in block]


@pytest.mark.parametrize("block", _config_blocks(), ids=lambda b: b.splitlines()[0])
def test_every_config_block_is_a_valid_router_config(block: str, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(block, encoding="utf-8")
    config = RouterConfig.load(path, environ={"OPENAI_API_KEY": "sk-placeholder"})
    assert config.server.host == "127.0.0.1"  # like the default: nothing beyond this machine


def test_there_are_config_blocks_for_the_other_two_ways_to_a_first_answer() -> None:
    types = {t for block in _config_blocks() for t in re.findall(r"type: (\w+)", block)}
    assert {"openai_compatible", "openai"} <= types


def test_shell_blocks_hold_one_command_per_line() -> None:
    for block in _blocks("sh"):
        for line in block.splitlines():
            command = line.split("  #", 1)[0]
            assert " | " not in command, line


def test_the_first_time_path_is_written_down() -> None:
    shell = "\n".join(_blocks("sh"))
    assert "source .venv/bin/activate" in shell
    assert ".venv/bin/sekha chat" in shell
    assert "ollama pull llama3.2:3b" in shell
    assert "SEKHA_CONFIG=my.yaml make run" in shell
    assert "SEKHA_CONFIG=cloud.yaml make run" in shell
