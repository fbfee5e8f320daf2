"""The core never depends on a platform: only the composition root may."""

from __future__ import annotations

import ast
from pathlib import Path

BRIDGE = Path(__file__).resolve().parents[2] / "bridge"
COMPOSITION_ROOT = BRIDGE / "app.py"
FORBIDDEN = (
    "adapters",
    "mautrix",
    "microsoft_agents",
    "botbuilder",
    "nio",
    "msal",
    "synapse",
    "secantusdb",
)


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _violations(root: Path) -> list[str]:
    return sorted(
        f"{path.relative_to(root.parent)} imports {module}"
        for path in root.rglob("*.py")
        if path != COMPOSITION_ROOT
        for module in _imported_modules(path)
        if module.split(".")[0] in FORBIDDEN
    )


def test_core_imports_no_adapter_or_chat_sdk() -> None:
    assert _violations(BRIDGE) == []


def test_the_check_catches_a_violation(tmp_path: Path) -> None:
    fake = tmp_path / "bridge"
    fake.mkdir()
    (fake / "relay.py").write_text("from adapters.matrix import x\nimport mautrix.types\n")
    (fake / "fine.py").write_text("import asyncio\nfrom bridge.model import Kind\n")
    assert _violations(fake) == [
        "bridge/relay.py imports adapters.matrix",
        "bridge/relay.py imports mautrix.types",
    ]
