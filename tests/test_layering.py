"""Layering: every slimbench import goes where README.md's "Layout" table says it may, and no
slimbench modules import each other in a cycle.

Imports are read with ``ast`` from every ``.py`` under the installed folders, wherever they sit:
at module level and inside functions alike, since a function-level import is a dependency that
only shows up at run time. Dynamic look-ups (``importlib.import_module`` behind a registry) are not
imports here: they are how a lower layer reaches a plugin it does not know.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# folder in the repository -> the package it installs as (pyproject.toml's package-dir)
PACKAGE_DIRS = {
    "slimbench": "slimbench",
    "bench": "slimbench.bench",
    "compress": "slimbench.compress",
    "tasks": "slimbench.tasks",
    "reports": "slimbench.reports",
}

# The README's "Layout" table (folder | what | depends on), as layer -> what it may import: a
# whole layer by its name, or one module by its dotted name where the table narrows a layer
# ("tasks (protocol)"). Keep the two in step: a change here is a change of the table.
# Every layer may import itself and the package root (`slimbench/`: errors, files, registry...).
ALLOWED: dict[str, set[str]] = {
    "slimbench": set(),
    # "nothing of bench; tasks for data only": calibration and distillation read the embedded
    # corpus, parity its evaluation prompts; nothing that scores or runs a model
    "compress": {"slimbench.tasks.corpus", "slimbench.tasks.evalsets"},
    # "only the CausalLM protocol in tasks/protocol.py" (which lives in tasks itself)
    "tasks": set(),
    "bench/runtimes": {"compress", "slimbench.tasks.protocol"},
    "bench/measure": {"bench/runtimes", "compress", "tasks"},
    "bench/orchestrate": {"bench/measure", "compress", "tasks", "reports"},
    # the top: `slimbench` commands drive every layer below (compress, eval, paired, ls), and
    # lmeval_model.py puts a runtime behind lm-eval's model registry
    "bench/cli": {"bench/orchestrate", "bench/measure", "bench/runtimes", "compress", "tasks",
                  "reports"},
    # "nothing of bench or compress; tasks for the paired quality tests"
    "reports": {"slimbench.tasks.paired"},
}

# bench/__init__.py and the command-line modules form the `bench/cli` layer
CLI_MODULES = {"slimbench.bench", "slimbench.bench.cli", "slimbench.bench.cli_parser",
               "slimbench.bench.lmeval_model"}


@dataclass(frozen=True)
class Import:
    """One slimbench import: who imports what, where, and whether inside a function."""

    source: str  # importing module, dotted
    target: str  # imported module (the deepest existing module the statement names)
    path: str
    lineno: int
    in_function: bool

    def __str__(self) -> str:
        where = "function-level" if self.in_function else "module-level"
        return f"{self.path}:{self.lineno}: {self.source} imports {self.target} ({where})"


def module_name(rel_path: str) -> str:
    """``compress/loader.py`` -> ``slimbench.compress.loader``; ``__init__.py`` -> the package."""
    parts = Path(rel_path).with_suffix("").parts
    head = PACKAGE_DIRS[parts[0]]
    rest = [p for p in parts[1:] if p != "__init__"]
    return ".".join([head, *rest])


def layer_of(module: str) -> str:
    """The layer of a dotted slimbench module (a key of ``ALLOWED``)."""
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in {"bench", "compress", "tasks", "reports"}:
        return "slimbench"
    if parts[1] != "bench":
        return parts[1]
    if module in CLI_MODULES:
        return "bench/cli"
    if len(parts) >= 3 and parts[2] in {"runtimes", "measure", "orchestrate"}:
        return f"bench/{parts[2]}"
    raise ValueError(f"{module}: no layer; add it to CLI_MODULES or a bench/ subfolder")


def _resolve(name: str, known: set[str]) -> str:
    """The deepest known module that ``name`` (a module or a name in one) points into."""
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports_in(source: str, rel_path: str, text: str, known: set[str]) -> list[Import]:
    """Every slimbench import in one file's text, module-level and function-level."""
    tree = ast.parse(text, filename=rel_path)
    is_pkg = Path(rel_path).name == "__init__.py"
    found: list[Import] = []

    def add(name: str, node: ast.AST, in_function: bool) -> None:
        if name == "slimbench" or name.startswith("slimbench."):
            found.append(Import(source, _resolve(name, known), rel_path, node.lineno,
                                in_function))

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node, in_function)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the importing module's package
                base = source.split(".")
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for alias in node.names:
                # `from pkg import mod` names a module; `from mod import name` a name in it
                full = f"{mod}.{alias.name}"
                add(full if full in known else mod, node, in_function)
        inner = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef
                                          | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    return found


def collect(root: Path = ROOT) -> list[Import]:
    """Every slimbench import in every installed ``.py`` file of the repository."""
    files = {}
    for folder in PACKAGE_DIRS:
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            files[module_name(rel)] = (rel, path.read_text())
    known = set(files)
    return [imp for mod, (rel, text) in files.items() for imp in imports_in(mod, rel, text, known)]


def violations(imports: list[Import]) -> list[str]:
    """The imports that go against ``ALLOWED``, one message each."""
    bad = []
    for imp in imports:
        src, dst = layer_of(imp.source), layer_of(imp.target)
        allowed = ALLOWED[src]
        if dst in {src, "slimbench"} or dst in allowed or imp.target in allowed:
            continue
        bad.append(f"{imp}: layer {src} may not import layer {dst} "
                   f"(README.md 'Layout' table; allowed: {', '.join(sorted(allowed)) or 'none'})")
    return bad


def cycles(imports: list[Import]) -> list[list[str]]:
    """Import cycles: strongly connected components of more than one module (Tarjan).

    The graph is every slimbench module, so a cycle within a package, between a package's
    ``__init__`` and its modules, or across layers is found alike.
    """
    graph: dict[str, set[str]] = {}
    for imp in imports:
        graph.setdefault(imp.source, set())
        graph.setdefault(imp.target, set())
        if imp.source != imp.target:
            graph[imp.source].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return sorted(out)


# ---------------------------------------------------------------------------------- the repo


def test_every_import_follows_the_layout_table():
    imports = collect()
    assert len(imports) > 100  # the walk found the code
    bad = violations(imports)
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_import_cycle_between_modules():
    found = cycles(collect())
    assert not found, "import cycles (module-level and function-level imports):\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_the_table_names_only_layers_and_modules_that_exist():
    imports = collect()
    modules = {i.source for i in imports} | {i.target for i in imports}
    assert {layer_of(m) for m in modules} == set(ALLOWED)  # every module has a layer
    for layer, allowed in ALLOWED.items():
        for name in allowed:  # a misspelt entry would silently forbid what it meant to allow
            assert name in ALLOWED or name in modules, (layer, name)


# ------------------------------------------------------------------------- the checker itself

KNOWN = {"slimbench", "slimbench.errors", "slimbench.bench", "slimbench.bench.cli",
         "slimbench.reports", "slimbench.reports.x", "slimbench.reports.y",
         "slimbench.compress", "slimbench.compress.calibration", "slimbench.tasks",
         "slimbench.tasks.corpus", "slimbench.tasks.scorers"}


def _check(rel_path: str, text: str) -> list[str]:
    return violations(imports_in(module_name(rel_path), rel_path, text, KNOWN))


def test_a_reports_module_importing_bench_inside_a_function_is_reported():
    text = "def f():\n    from slimbench.bench import cli\n    return cli\n"
    bad = _check("reports/x.py", text)
    assert len(bad) == 1
    assert "reports/x.py:2: slimbench.reports.x imports slimbench.bench.cli" in bad[0]
    assert "function-level" in bad[0] and "layer reports may not import layer bench/cli" in bad[0]


def test_module_level_and_relative_imports_are_read():
    assert _check("reports/x.py", "import slimbench.bench.cli\n")
    assert _check("reports/x.py", "from ..bench import cli\n")
    assert not _check("reports/x.py", "from . import y\nfrom slimbench.errors import E\n")


def test_compress_may_read_task_data_but_not_scorers():
    assert not _check("compress/calibration.py", "from slimbench.tasks.corpus import load\n")
    bad = _check("compress/calibration.py", "def f():\n    from slimbench.tasks import scorers\n")
    assert len(bad) == 1 and "layer compress may not import layer tasks" in bad[0]


def test_cycles_found_through_function_level_imports():
    a = imports_in("slimbench.reports.x", "reports/x.py", "from slimbench.reports import y\n",
                   KNOWN)
    b = imports_in("slimbench.reports.y", "reports/y.py",
                   "def f():\n    from slimbench.reports.x import g\n", KNOWN)
    assert cycles(a + b) == [["slimbench.reports.x", "slimbench.reports.y"]]
    assert cycles(a) == []
