"""docs/ARCHITECTURE.md stays true to the code: its import graph is the code's, and every section
a code comment cites exists."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "ARCHITECTURE.md"
CITATION = re.compile(r"ARCHITECTURE\.md §(\d+)")


def _import_graph_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "docs" / "import_graph.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_parts_diagram_is_the_current_import_graph() -> None:
    import_graph = _import_graph_module()
    text = DOC.read_text(encoding="utf-8")
    block = text[text.index(import_graph.BEGIN) + len(import_graph.BEGIN) : text.index(import_graph.END)]
    assert block.strip() == import_graph.generate(), "run: python docs/import_graph.py --write"


def test_every_module_is_drawn_in_a_part() -> None:
    import_graph = _import_graph_module()
    domain = import_graph.domain_modules()
    for package in ("router_service", "embedding_service", "sekha_runtime", "sekha_cli"):
        for path in (ROOT / package).rglob("*.py"):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            assert import_graph.part_of(module, domain) in import_graph.PARTS, module


def test_every_cited_section_exists() -> None:
    sections = set(re.findall(r"^## (\d+) ", DOC.read_text(encoding="utf-8"), flags=re.MULTILINE))
    cited: dict[str, set[str]] = {}
    for package in ("router_service", "embedding_service", "sekha_runtime", "clients", "testkit", "tests"):
        for path in (ROOT / package).rglob("*.py"):
            if "node_modules" in path.parts:
                continue
            for number in CITATION.findall(path.read_text(encoding="utf-8")):
                cited.setdefault(number, set()).add(str(path.relative_to(ROOT)))
    assert cited, "the code cites docs/ARCHITECTURE.md"
    missing = {number: files for number, files in cited.items() if number not in sections}
    assert not missing
