"""The layering DESIGN.md promises: loraq imports neither api nor worker; api and worker never
import each other; the API process never imports torch."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def imported_packages(package: str) -> set[str]:
    names: set[str] = set()
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("loraq", {"api", "worker", "torch", "transformers", "peft", "bitsandbytes"}),
        ("api", {"worker", "torch", "transformers", "peft", "bitsandbytes"}),
        ("worker", {"api"}),
    ],
)
def test_layering(package: str, forbidden: set[str]) -> None:
    assert imported_packages(package) & forbidden == set()


def test_api_process_never_imports_torch(tmp_path: Path) -> None:
    probe = (
        "import sys\n"
        "from fastapi.testclient import TestClient\n"
        "from api.app import create_app\n"
        "client = TestClient(create_app())\n"
        "assert client.get('/healthz').status_code == 200\n"
        "client.get('/v1/models')\n"
        "heavy = ('torch', 'transformers', 'peft', 'bitsandbytes', 'worker')\n"
        "heavy = sorted(m for m in heavy if m in sys.modules)\n"
        "print(heavy)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"LORAQ_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_unsafe_loading_in_the_code() -> None:
    for package in ("loraq", "api", "worker"):
        for path in (REPO / package).rglob("*.py"):
            source = path.read_text()
            assert not re.search(r"trust_remote_code\s*=\s*True", source), path
            assert "import pickle" not in source, path
