"""The layout's rules (DESIGN.md "Layers"), checked by reading every module's imports.

Every ``import``/``from … import`` in ``bot/`` counts, at module level and inside
functions alike (a function-level import is still a dependency; it only runs later).
The rules:

* no import circle between modules;
* no import from a higher layer into a lower one:
  base (config, faults) < core < checks, adapters < flows < app, web (the staff site);
  checks and adapters are siblings and never import each other (a check reaches DNS
  through ``bot.core.dnsresults.DnsLookup``, a Protocol the adapter's client satisfies);
* no ``from x import _name`` of another module's private name;
* ``bot/core`` does no I/O: it imports none of the I/O modules and writes no file;
* only ``bot/core/records.py`` writes a ``v=DKIM1`` record;
* flows take what they use: no function in ``bot/flows`` (but ``runtime.py``, which
  defines it) takes the runtime ``Bot``, and no flow imports it; a flow takes plain
  values or one of the capabilities of ``bot/flows/desks.py`` (DESIGN.md rule 11);
* SQL only in the store: no other module imports sqlite3, calls ``.execute``/
  ``.executemany``/``.executescript`` or reaches past the store to its connection
  (``store.db``). ``SQL_MODULES`` is the explicit allowlist (a backup tool in
  ``bot/adapters`` that needs the sqlite3 backup API joins it by name).
* no function is longer than 60 lines (``MAX_FUNCTION_LINES``): a longer one is split
  into named pieces.

Each rule is a function over a parsed module set, so the tests below also feed it a
deliberate violation and check that it is caught (a rule that cannot fail proves nothing).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BOT = ROOT / "bot"

# The layer of each top-level part of ``bot``; a module's layer is its package's.
LAYERS = {"config": 0, "faults": 0, "core": 1, "checks": 2, "adapters": 2, "flows": 3, "app": 4, "web": 4,
          "__main__": 4, "__init__": 0}
# Same rank, still forbidden: checks judge DNS answers without the I/O layer (and the
# adapters never need a check).
SIBLINGS_APART = {("checks", "adapters"), ("adapters", "checks")}

IO_MODULES = ("sqlite3", "smtplib", "imaplib", "imapclient", "socket", "subprocess", "fcntl",
              "dns.resolver", "dns.query", "dns.update", "shutil", "tempfile")
WRITE_METHODS = ("write_text", "write_bytes", "unlink", "mkdir", "rename", "chmod", "touch", "symlink_to")
# os.<name>(...) calls that change files (str.replace is not one; os.replace is).
OS_WRITES = ("replace", "rename", "write", "open", "remove", "unlink", "makedirs", "mkdir", "chmod",
             "fsync", "system", "popen")
RECORD_MODULE = "bot.core.records"
SQL_MODULES = frozenset({"bot.adapters.store"})
RUNTIME_MODULE = "bot.flows.runtime"  # defines Bot; the one flow module that may name it


@dataclass(frozen=True)
class Import:
    module: str      # the importing module, e.g. "bot.flows.rechecks"
    target: str      # the module imported from, e.g. "bot.core.cases"
    name: str | None  # the name taken by ``from target import name``; None for ``import target``
    line: int


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def parse_modules(root: Path) -> dict[str, ast.Module]:
    return {module_name(p, root): ast.parse(p.read_text(encoding="utf-8"), str(p))
            for p in sorted((root / "bot").rglob("*.py"))}


def imports_of(name: str, tree: ast.Module, is_package: bool = False) -> list[Import]:
    """Every import in ``tree`` (ast.walk: function bodies and ``if TYPE_CHECKING`` too)."""
    package = name if is_package else name.rpartition(".")[0]
    out: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [Import(name, a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out += [Import(name, target, a.name, node.lineno) for a in node.names]
    return out


def all_imports(modules: dict[str, ast.Module]) -> list[Import]:
    out: list[Import] = []
    for name, tree in modules.items():
        out += imports_of(name, tree, is_package=name.count(".") == 0 or name.endswith("__init__"))
    return out


def resolve(imp: Import, modules: dict[str, ast.Module]) -> str | None:
    """The bot module ``imp`` depends on (``from bot.adapters import signer`` → the signer)."""
    if imp.name and f"{imp.target}.{imp.name}" in modules:
        return f"{imp.target}.{imp.name}"
    return imp.target if imp.target in modules else None


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def graph(modules: dict[str, ast.Module]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for imp in all_imports(modules):
        target = resolve(imp, modules)
        if target and target != imp.module:
            edges[imp.module].add(target)
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def upward_imports(modules: dict[str, ast.Module]) -> list[str]:
    bad = []
    for imp in all_imports(modules):
        target = resolve(imp, modules)
        if target is None:
            continue
        a, b = layer_of(imp.module), layer_of(target)
        if LAYERS[b] > LAYERS[a] or (a, b) in SIBLINGS_APART:
            bad.append(f"{imp.module}:{imp.line} imports {target} ({a} may not import {b})")
    return bad


def private_imports(modules: dict[str, ast.Module]) -> list[str]:
    """``from x import _name`` across modules, and ``x._name`` on an imported bot module."""
    bad = [f"{imp.module}:{imp.line} imports {imp.target}.{imp.name}"
           for imp in all_imports(modules)
           if imp.name and imp.name.startswith("_") and not imp.name.startswith("__")
           and imp.target.startswith("bot") and imp.target != imp.module]
    for name, tree in modules.items():
        aliases = {}
        for imp in imports_of(name, tree):
            target = resolve(imp, modules)
            if target and target != name and imp.name is None:
                aliases[imp.target.split(".")[0]] = target  # import bot.x.y: used as bot.x.y.attr
            elif target and target != name and target == f"{imp.target}.{imp.name}":
                aliases[imp.name] = target  # from bot.x import y (a module)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id in aliases):
                bad.append(f"{name}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    return bad


def core_io(modules: dict[str, ast.Module]) -> list[str]:
    """I/O imports and file writes in ``bot.core``."""
    bad = []
    for name, tree in modules.items():
        if layer_of(name) != "core":
            continue
        for imp in imports_of(name, tree):
            full = f"{imp.target}.{imp.name}" if imp.name else imp.target
            if any(full == io or full.startswith(io + ".") or imp.target == io
                   or imp.target.startswith(io + ".") for io in IO_MODULES):
                bad.append(f"{name}:{imp.line} imports {full}")
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Name) and func.id == "open":
                mode = node.args[1] if len(node.args) > 1 else next(
                    (k.value for k in node.keywords if k.arg == "mode"), None)
                if not (isinstance(mode, ast.Constant) and isinstance(mode.value, str)
                        and set(mode.value) <= {"r", "b", "t"}):
                    bad.append(f"{name}:{node.lineno} open() for writing (or mode not a plain read)")
            elif (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                  and func.value.id == "os" and func.attr in OS_WRITES):
                bad.append(f"{name}:{node.lineno} calls os.{func.attr}()")
            elif isinstance(func, ast.Attribute) and func.attr in WRITE_METHODS:
                bad.append(f"{name}:{node.lineno} calls .{func.attr}()")
            elif isinstance(func, ast.Attribute) and func.attr == "open" and node.args:
                mode = node.args[0]
                if not (isinstance(mode, ast.Constant) and isinstance(mode.value, str)
                        and set(mode.value) <= {"r", "b", "t"}):
                    bad.append(f"{name}:{node.lineno} .open() for writing")
    return bad


def dkim_record_builders(modules: dict[str, ast.Module]) -> list[str]:
    """f-strings that write ``v=DKIM1`` outside the one record module."""
    bad = []
    for name, tree in modules.items():
        if name == RECORD_MODULE:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr) and any(
                    isinstance(v, ast.Constant) and "v=DKIM1;" in str(v.value) for v in node.values):
                bad.append(f"{name}:{node.lineno}")
    return bad


def sql_outside_store(modules: dict[str, ast.Module]) -> list[str]:
    bad = []
    for name, tree in modules.items():
        if name in SQL_MODULES:
            continue
        for imp in imports_of(name, tree):
            if imp.target == "sqlite3" or imp.target.startswith("sqlite3.") or (
                    imp.name == "sqlite3"):
                bad.append(f"{name}:{imp.line} imports sqlite3")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("execute", "executemany", "executescript"):
                bad.append(f"{name}:{node.lineno} .{node.attr}")
            elif isinstance(node, ast.Attribute) and node.attr == "db" and (
                    (isinstance(node.value, ast.Attribute) and node.value.attr == "store")
                    or (isinstance(node.value, ast.Name) and node.value.id == "store")):
                bad.append(f"{name}:{node.lineno} store.db")
    return bad


def flows_taking_the_runtime(modules: dict[str, ast.Module]) -> list[str]:
    """Flows that import ``Bot`` or have a parameter annotated with it (a string
    annotation, ``runtime.Bot`` or ``Bot | None`` count too)."""
    bad = []
    for name, tree in modules.items():
        if not name.startswith("bot.flows.") or name == RUNTIME_MODULE:
            continue
        for imp in imports_of(name, tree):
            if imp.name == "Bot":
                bad.append(f"{name}:{imp.line} imports Bot")
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue
            a = node.args
            for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
                if arg is not None and arg.annotation is not None and _names_bot(arg.annotation):
                    bad.append(f"{name}:{arg.lineno} {arg.arg}: Bot")
    return bad


def _names_bot(annotation: ast.expr) -> bool:
    for node in ast.walk(annotation):
        if isinstance(node, ast.Name) and node.id == "Bot" or isinstance(node, ast.Attribute) and node.attr == "Bot":
            return True
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                if _names_bot(ast.parse(node.value, mode="eval").body):
                    return True
            except SyntaxError:
                continue
    return False


# ------------------------------------------------------------------------ the rules on bot/


@pytest.fixture(scope="module")
def modules() -> dict[str, ast.Module]:
    return parse_modules(ROOT)


def test_every_module_is_in_a_layer(modules: dict[str, ast.Module]) -> None:
    assert {layer_of(m) for m in modules} <= set(LAYERS)


def test_no_import_circles(modules: dict[str, ast.Module]) -> None:
    assert circles(graph(modules)) == []


def test_no_upward_imports(modules: dict[str, ast.Module]) -> None:
    assert upward_imports(modules) == []


def test_no_private_names_across_modules(modules: dict[str, ast.Module]) -> None:
    assert private_imports(modules) == []


def test_core_does_no_io(modules: dict[str, ast.Module]) -> None:
    assert core_io(modules) == []


def test_one_place_writes_a_dkim_record(modules: dict[str, ast.Module]) -> None:
    assert RECORD_MODULE in modules
    assert dkim_record_builders(modules) == []


def test_sql_only_in_the_store(modules: dict[str, ast.Module]) -> None:
    assert sql_outside_store(modules) == []


def test_flows_take_what_they_use(modules: dict[str, ast.Module]) -> None:
    assert RUNTIME_MODULE in modules and "bot.flows.desks" in modules
    assert flows_taking_the_runtime(modules) == []


# ------------------------------------------------------------ the rules catch a violation


def _with(modules: dict[str, ast.Module], name: str, source: str) -> dict[str, ast.Module]:
    return {**modules, name: ast.parse(source)}


def test_a_circle_through_a_function_level_import_is_caught(modules: dict[str, ast.Module]) -> None:
    bad = _with(modules, "bot.core.cases", ast.unparse(modules["bot.core.cases"])
                + "\ndef f():\n    from bot.core.records import dkim_record\n")
    bad = _with(bad, "bot.core.records", ast.unparse(modules["bot.core.records"])
                + "\ndef g():\n    from bot.core import cases\n")
    assert ["bot.core.cases", "bot.core.records"] in circles(graph(bad))


def test_an_upward_import_is_caught(modules: dict[str, ast.Module]) -> None:
    bad = _with(modules, "bot.checks.spf", ast.unparse(modules["bot.checks.spf"])
                + "\ndef f():\n    from bot.flows.compose import enqueue_mail\n")
    assert any("bot.checks.spf" in b and "bot.flows.compose" in b for b in upward_imports(bad))
    sibling = _with(modules, "bot.checks.dmarc", "from bot.adapters.dnsclient import DnsClient\n")
    assert any("bot.checks.dmarc" in b for b in upward_imports(sibling))
    relative = _with(modules, "bot.core.cases", "from ..flows import runtime\n")
    assert any("bot.flows.runtime" in b for b in upward_imports(relative))


def test_a_private_import_is_caught(modules: dict[str, ast.Module]) -> None:
    bad = _with(modules, "bot.flows.rechecks", "def f():\n    from bot.flows.compose import _secret\n")
    assert private_imports(bad) == ["bot.flows.rechecks:2 imports bot.flows.compose._secret"]
    used = _with(modules, "bot.flows.rechecks", "from bot.flows import compose\ndef f():\n    compose._secret()\n")
    assert private_imports(used) == ["bot.flows.rechecks:3 uses bot.flows.compose._secret"]


@pytest.mark.parametrize("source", [
    "import sqlite3\n", "from socket import create_connection\n", "import dns.resolver\n",
    "from dns import query\n", "def f():\n    import subprocess\n",
    "def f(p):\n    p.write_text('x')\n", "def f():\n    open('x', 'w')\n",
    "def f(m):\n    open('x', m)\n", "def f(p):\n    p.open('a')\n",
    "import os\ndef f():\n    os.replace('a', 'b')\n",
])
def test_io_in_core_is_caught(modules: dict[str, ast.Module], source: str) -> None:
    assert core_io(_with(modules, "bot.core.cases", source))


def test_a_second_dkim_record_builder_is_caught(modules: dict[str, ast.Module]) -> None:
    bad = _with(modules, "bot.flows.compose", "def f(a, p):\n    return f'v=DKIM1; k={a}; p={p}'\n")
    assert dkim_record_builders(bad) == ["bot.flows.compose:2"]


@pytest.mark.parametrize("source", [
    "import sqlite3\n", "def f(bot):\n    bot.store.db.execute('DELETE FROM cases')\n",
    "def f(store):\n    return store.db\n", "def f(c):\n    c.executescript('x')\n",
    "def f(c):\n    c.executemany('x', [])\n",
])
def test_sql_outside_the_store_is_caught(modules: dict[str, ast.Module], source: str) -> None:
    assert sql_outside_store(_with(modules, "bot.flows.rotation", source))


@pytest.mark.parametrize(("source", "found"), [
    ("from bot.flows.runtime import Bot\ndef f(bot: Bot) -> None:\n    pass\n",
     ["bot.flows.compose:1 imports Bot", "bot.flows.compose:2 bot: Bot"]),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from bot.flows.runtime import Bot\n",
     ["bot.flows.compose:3 imports Bot"]),
    ("def f(x, *, bot: 'Bot | None' = None):\n    pass\n", ["bot.flows.compose:1 bot: Bot"]),
    ("from bot.flows import runtime\ndef f(b: runtime.Bot):\n    pass\n", ["bot.flows.compose:2 b: Bot"]),
])
def test_a_flow_taking_the_runtime_is_caught(modules: dict[str, ast.Module], source: str, found: list[str]) -> None:
    assert flows_taking_the_runtime(_with(modules, "bot.flows.compose", source)) == found


def test_the_runtime_itself_may_name_bot(modules: dict[str, ast.Module]) -> None:
    assert flows_taking_the_runtime(_with(modules, RUNTIME_MODULE, "class Bot: ...\ndef f(b: Bot): ...\n")) == []


def readme_layout() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("\n## Layout\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def unlisted_modules(layout: str, root: Path = ROOT) -> list[str]:
    """Modules of ``bot/<package>/`` the README's Layout section does not name (as `name`)."""
    return [f"{p.parent.name}/{p.name}" for p in sorted((root / "bot").glob("*/*.py"))
            if p.stem != "__init__" and f"`{p.stem}`" not in layout]


def test_readme_layout_names_every_module() -> None:
    assert unlisted_modules(readme_layout()) == []


def test_an_unlisted_module_is_caught() -> None:
    assert "core/records.py" in unlisted_modules(readme_layout().replace("`records`", "records"))


# ------------------------------------------------------------------- short functions

# A function a reader takes in at once: longer ones are split into named pieces.
MAX_FUNCTION_LINES = 60


def long_functions(modules: dict[str, ast.Module], limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """Functions (methods and nested functions too) longer than ``limit`` lines, counted
    from ``def`` to the last line, docstring and comments included, decorators not."""
    found = []
    for name, tree in modules.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > limit:
                    found.append(f"{name}:{node.lineno} {node.name}: {length} lines")
    return sorted(found)


def test_no_function_is_longer_than_60_lines(modules: dict[str, ast.Module]) -> None:
    assert long_functions(modules) == []


def test_a_long_function_is_caught() -> None:
    def source(lines: int) -> str:  # a def line and lines - 1 statements
        return "def f() -> None:\n" + "".join(f"    x{i} = {i}\n" for i in range(lines - 1))

    assert long_functions({"bot.core.cases": ast.parse(source(61))}) == ["bot.core.cases:1 f: 61 lines"]
    assert long_functions({"bot.core.cases": ast.parse(source(60))}) == []
    nested = "class C:\n    def m(self) -> None:\n" + "".join(f"        y{i} = {i}\n" for i in range(70))
    assert long_functions({"bot.core.cases": ast.parse(nested)}) == ["bot.core.cases:2 m: 71 lines"]
