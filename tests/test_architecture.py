"""The layering the project keeps: loraq imports neither api nor worker; api and worker never
import each other; the API process never imports torch; every SQL statement lives in a repository
module; no two modules import each other, however indirectly; every router's routes make one trip
through the thread pool."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("loraq", "api", "worker")
# The statement builders of SQLAlchemy: only a repository module may build SQL.
SQL_BUILDERS = frozenset({"select", "update", "insert", "delete", "text"})
# Session (and Connection) methods that run SQL.
SQL_RUNNERS = frozenset({"execute", "scalars", "scalar"})


def project_modules() -> dict[str, Path]:
    """Every module of the project's packages, by dotted name (a package by its own name)."""
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_packages(package: str) -> set[str]:
    names: set[str] = set()
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


SERVER_AND_TRAINING = {"api", "worker", "sqlalchemy", "fastapi", "celery", "kombu", "boto3", "torch"}


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("loraq", {"api", "worker", "torch", "transformers", "peft", "bitsandbytes"}),
        ("api", {"worker", "torch", "transformers", "peft", "bitsandbytes"}),
        ("worker", {"api"}),
        # The client and the command line run where only their light dependencies are installed.
        *((part, SERVER_AND_TRAINING) for part in ("loraq/client", "loraq/cli")),
    ],
)
def test_layering(package: str, forbidden: set[str]) -> None:
    assert imported_packages(package) & forbidden == set()


MIGRATIONS = REPO / "loraq" / "migrations"

# Where running SQL outside a repository module is the point, with why: "file:function".
SQL_ALLOWED = {
    # The PRAGMAs every new SQLite connection gets, on the raw DBAPI cursor: engine setup, not a query.
    "loraq/core/db.py:_tune_sqlite",
}


def is_sqlalchemy(module: str | None) -> bool:
    return module is not None and (module == "sqlalchemy" or module.startswith("sqlalchemy."))


class SqlFinder(ast.NodeVisitor):
    """Collects each place in a module that builds or runs SQL, as "file:line (function): what"."""

    def __init__(self, where: str, tree: ast.Module) -> None:
        self.where = where
        self.function = ""
        self.found: list[str] = []
        # Names bound to a sqlalchemy module (`import sqlalchemy as sa`), so that `sa.select` is seen too.
        self.aliases = {
            alias.asname or alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
            if is_sqlalchemy(alias.name)
        }
        self.visit(tree)

    def report(self, node: ast.expr | ast.stmt, what: str) -> None:
        if f"{self.where}:{self.function}" not in SQL_ALLOWED:
            self.found.append(f"{self.where}:{node.lineno} ({self.function or 'module'}): {what}")

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        outer, self.function = self.function, node.name
        self.generic_visit(node)
        self.function = outer

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if is_sqlalchemy(node.module):
            for alias in node.names:
                if alias.name in SQL_BUILDERS:
                    self.report(node, f"imports {alias.name} from {node.module}")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in SQL_BUILDERS and isinstance(node.value, ast.Name) and node.value.id in self.aliases:
            self.report(node, f"uses {node.value.id}.{node.attr}")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Attribute) and node.func.attr in SQL_RUNNERS:
            self.report(node, f"calls .{node.func.attr}()")
        self.generic_visit(node)


def test_every_sql_statement_lives_in_a_repository_module() -> None:
    found = [
        place
        for path in project_modules().values()
        # Migrations change the schema and move its data: SQL is what they are made of.
        if path.name != "repository.py" and MIGRATIONS not in path.parents
        for place in SqlFinder(path.relative_to(REPO).as_posix(), ast.parse(path.read_text())).found
    ]
    assert found == [], "SQL outside a repository.py module:\n" + "\n".join(found)


def test_the_sql_check_sees_builders_and_runners() -> None:
    source = (
        "import sqlalchemy as sa\n"
        "from sqlalchemy.sql import text\n"
        "def f(session):\n"
        "    return session.scalars(sa.select(1))\n"
    )
    found = SqlFinder("x.py", ast.parse(source)).found
    assert found == [
        "x.py:2 (module): imports text from sqlalchemy.sql",
        "x.py:4 (f): calls .scalars()",
        "x.py:4 (f): uses sa.select",
    ]


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules one module imports anywhere: at the top, in functions, under TYPE_CHECKING."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: climb from this module's package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                # `from pkg import module` imports the module; `from pkg import name`, the package.
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in modules else base)
    return (targets & modules.keys()) - {name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph, as the modules along it (first repeated at the end), or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(module: str) -> list[str] | None:
        path.append(module)
        on_path.add(module)
        for target in sorted(graph[module]):
            if target in on_path:
                return [*path[path.index(target) :], target]
            if target not in done and (cycle := visit(target)):
                return cycle
        path.pop()
        on_path.remove(module)
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done and (cycle := visit(module)):
            return cycle
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"b"}}) == ["b", "c", "b"]


def test_no_import_cycles() -> None:
    modules = project_modules()
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    assert sum(len(targets) for targets in graph.values()) > len(modules), "the graph missed the imports"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


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


def test_every_route_of_every_router_makes_one_trip_through_the_thread_pool() -> None:
    """OneHopRoute is set per router (route_class=): a router added without it would quietly make its
    `def` routes validate their answers in a second trip through the pool."""
    from fastapi import APIRouter
    from fastapi.routing import APIRoute

    import api.routes
    from api.routing import OneHopRoute

    routers = [
        value
        for module_info in pkgutil.iter_modules(api.routes.__path__)
        for value in vars(importlib.import_module(f"api.routes.{module_info.name}")).values()
        if isinstance(value, APIRouter)
    ]
    assert len(routers) >= 9, routers  # every module's router, and /v1/me's
    plain = [
        route.path
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute) and not isinstance(route, OneHopRoute)
    ]
    assert plain == []
