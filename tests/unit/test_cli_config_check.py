"""Config checking has one home per service: `sekha config check` runs the service's own check,
and says what to install when the gateway is not there."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from embedding_service.__main__ import main as embedding_main
from router_service.__main__ import main as router_main
from sekha_cli.admin import config_check, config_migrate
from sekha_cli.main import CliError, build_parser

ROUTER_YAML = (
    "providers:\n"
    "  - id: local-llm\n    type: openai_compatible\n    base_url: http://127.0.0.1:9/v1\n"
    "    models:\n      - id: m1\n        tasks: [chat_smart]\n"
)


def check_args(path: Path) -> argparse.Namespace:
    return build_parser().parse_args(["config", "check", str(path)])


@pytest.mark.parametrize(
    ("text", "service_main"),
    [
        (ROUTER_YAML, router_main),
        (ROUTER_YAML.replace("chat_smart", "chat_fancy"), router_main),
        ("chroma:\n  mode: http\n  host: chroma\n  port: 8000\n", embedding_main),
        ("chroma:\n  mode: carrier-pigeon\n  port: 99999\n", embedding_main),
    ],
    ids=["router-ok", "router-bad", "embedding-ok", "embedding-bad"],
)
def test_the_cli_and_the_service_run_the_same_check(
    text: str, service_main: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "service.yaml"
    path.write_text(text, encoding="utf-8")
    cli_code = config_check(check_args(path))
    cli_output = capsys.readouterr()
    service_code = service_main(["check-config", str(path)])  # type: ignore[operator]
    service_output = capsys.readouterr()
    assert (cli_code, cli_output.out, cli_output.err) == (
        service_code,
        service_output.out,
        service_output.err,
    )
    assert cli_output.out or cli_output.err


def test_without_the_gateway_config_commands_say_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(ROUTER_YAML, encoding="utf-8")
    for name in list(sys.modules):
        if name.split(".")[0] in ("router_service", "embedding_service", "sekha_runtime"):
            monkeypatch.delitem(sys.modules, name)
    for name in ("router_service", "embedding_service", "sekha_runtime"):
        monkeypatch.setitem(sys.modules, name, None)  # what an import sees when it is not installed
    with pytest.raises(CliError, match=r"`sekha config check` needs the gateway installed.*sekha-gateway"):
        config_check(check_args(path))
    (tmp_path / "old.env").write_text("OPENAI_API_KEY=sk-test\n", encoding="utf-8")
    migrate = build_parser().parse_args(
        ["config", "migrate", str(tmp_path / "old.env"), str(tmp_path / "new.yaml")]
    )
    with pytest.raises(CliError, match=r"`sekha config migrate` needs the gateway installed"):
        config_migrate(migrate)
