"""The layering holds: the core imports no I/O, and every module has a test file."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gatekeeper"
# What the pure core may import besides itself: the standard library's pure parts and
# the C matchers it compiles once.
CORE_ALLOWED = {"__future__", "collections", "dataclasses", "enum", "functools", "typing",
                "ipaddress", "json", "math", "re", "itertools", "ahocorasick", "re2",
                "base64", "hashlib", "http_sf", "cryptography", "bisect", "hmac", "struct",
                "zlib", "xml", "html", "decimal", "heapq",
                "gatekeeper.core", "gatekeeper.errors"}
CORE_FORBIDDEN = {"asyncio", "socket", "aiohttp", "yaml", "time", "os", "structlog",
                  "prometheus_client", "pathlib", "importlib"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_core_imports_nothing_that_does_io() -> None:
    for path in sorted((PACKAGE / "core").glob("*.py")):
        for name in _imports(path):
            top = name.split(".")[0]
            assert top not in CORE_FORBIDDEN, f"{path.name} imports {name}"
            assert name in CORE_ALLOWED or top in CORE_ALLOWED or name.startswith(
                "gatekeeper.core"), f"{path.name} imports {name}"


def test_only_wiring_builds_the_concrete_store_for_the_proxy() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in {"wiring.py", "gate.py", "explain.py"} or "store" in path.parts:
            continue
        assert "gatekeeper.store.memory" not in _imports(path), path
