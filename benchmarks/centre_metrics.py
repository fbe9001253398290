"""Static measures of the shape of the project's centre: the packages trainers, search_spaces, study, analysis.

Reads every ``.py`` file under the four packages (recursively) with ``ast``; imports nothing from the project and
runs no project code. What it reports:

1. Package import graph: for each ordered pair (A, B) of the four packages, the import statements in A's files that
   import B (module-level and function-level alike; ``import x.y``, ``from x import y``, relative imports resolved),
   and the files they are in; then the package-level cycles of that graph (self-edges ignored).
2. File-level import cycles: the graph of project modules (one module = one ``.py`` file). ``from a.b import c`` is
   an edge to ``a/b/c.py`` when that file exists, else to ``a/b/__init__.py``; importing ``a.b.c`` also implies the
   ``__init__.py`` of every package above it (``a``, ``a.b``), and those edges are marked ``implied``. Every strongly
   connected component with more than one module is printed (Tarjan), with its internal edges; an edge made only
   by imports inside function bodies is marked ``function``.
3. Imports inside function/method bodies: every one that imports a project package (``file:line module``), and the
   total of all in-function imports, third-party ones (torch, ray, mlflow, ...) included.
4. The 15 longest functions/methods (``def`` line to ``end_lineno``; nested defs counted on their own) in trainers,
   study and analysis, and how many of those exceed 60 and 80 lines.
5. Modules over 400 lines.
6. The number of ``# noqa: E402`` occurrences in the four packages.

Imports under ``if TYPE_CHECKING:`` are not counted anywhere: they never run.

Run from the repository root (standard library only):
    python benchmarks/centre_metrics.py              # readable text (markdown-ish tables)
    python benchmarks/centre_metrics.py --json       # the same numbers as JSON
    python benchmarks/centre_metrics.py --root DIR   # measure another checkout
"""

from __future__ import annotations

import argparse
import ast
import itertools
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACKAGES = ("trainers", "search_spaces", "study", "analysis")
LONG_FUNCTION_PACKAGES = ("trainers", "study", "analysis")
TOP_FUNCTIONS = 15
FUNCTION_THRESHOLDS = (60, 80)
LONG_MODULE_LINES = 400
NOQA_E402 = re.compile(r"#\s*noqa\s*:\s*[A-Z0-9, ]*\bE402\b")


@dataclass
class ImportStmt:
    """One import statement in a project file, with the project modules it reaches."""

    file: str  # path relative to the root, e.g. "trainers/loop.py"
    line: int
    text: str  # the imported module as written, e.g. "study.spec" or ".base" -> resolved "trainers.norms.base"
    in_function: bool
    targets: dict[str, bool] = field(default_factory=dict)  # project module -> True when only implied (a parent)


@dataclass
class Function:
    file: str
    name: str  # qualified within the file: "Class.method", "outer.inner"
    line: int
    lines: int


@dataclass
class Module:
    name: str  # dotted: "trainers.norms" for trainers/norms/__init__.py
    path: str
    is_package: bool
    source: str
    tree: ast.Module


def load_modules(root: Path) -> tuple[dict[str, Module], list[str]]:
    """Parse every .py file of the four packages; returns the modules by dotted name and the unparsable files."""
    modules: dict[str, Module] = {}
    skipped: list[str] = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root)
            if "__pycache__" in rel.parts:
                continue
            parts = list(rel.with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            source = path.read_text(encoding="utf-8")
            try:
                tree = ast.parse(source, filename=str(rel))
            except SyntaxError:
                skipped.append(rel.as_posix())
                continue
            name = ".".join(parts)
            modules[name] = Module(name, rel.as_posix(), is_package, source, tree)
    return modules, skipped


def resolve_targets(dotted: str, names: list[str], modules: dict[str, Module]) -> dict[str, bool]:
    """Project modules reached by importing ``dotted`` (and, for ``from dotted import names``, its submodules).

    The value is True for a module that is only implied: the ``__init__`` of a package above the imported one.
    """
    targets: dict[str, bool] = {}
    parts = dotted.split(".")
    for depth in range(1, len(parts)):
        parent = ".".join(parts[:depth])
        if parent in modules:
            targets[parent] = True
    direct = [f"{dotted}.{name}" for name in names if f"{dotted}.{name}" in modules]
    if dotted in modules:
        # `from pkg import sub` runs pkg/__init__.py first; it is reached directly only when some name is not a module.
        only_submodules = bool(names) and len(direct) == len(names) and modules[dotted].is_package
        targets[dotted] = only_submodules
    for module in direct:
        targets[module] = False
    return targets


def absolute_from(module: Module, node: ast.ImportFrom) -> str:
    """The absolute dotted module of a ``from ... import`` (relative levels resolved against ``module``)."""
    if node.level == 0:
        return node.module or ""
    base = module.name.split(".")
    if not module.is_package:
        base = base[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


class _Walker(ast.NodeVisitor):
    """Collects the import statements and the functions of one module, tracking function nesting."""

    def __init__(self, module: Module, modules: dict[str, Module]) -> None:
        self.module = module
        self.modules = modules
        self.scope: list[str] = []
        self.function_depth = 0
        self.imports: list[ImportStmt] = []
        self.functions: list[Function] = []

    def _add(self, node: ast.stmt, text: str, targets: dict[str, bool]) -> None:
        in_function = self.function_depth > 0
        self.imports.append(ImportStmt(self.module.path, node.lineno, text, in_function, targets))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name, resolve_targets(alias.name, [], self.modules))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        dotted = absolute_from(self.module, node)
        names = [alias.name for alias in node.names if alias.name != "*"]
        self._add(node, dotted, resolve_targets(dotted, names, self.modules))

    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.scope.append(node.name)
        lines = (node.end_lineno or node.lineno) - node.lineno + 1
        self.functions.append(Function(self.module.path, ".".join(self.scope), node.lineno, lines))
        self.function_depth += 1
        self.generic_visit(node)
        self.function_depth -= 1
        self.scope.pop()

    visit_FunctionDef = _visit_function
    visit_AsyncFunctionDef = _visit_function

    def visit_If(self, node: ast.If) -> None:
        # `if TYPE_CHECKING:` imports are for annotations only: no import at run time, so no edge.
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()


def package_of(module: str) -> str | None:
    top = module.split(".")[0]
    return top if top in PACKAGES else None


def package_graph(imports: list[ImportStmt]) -> dict[tuple[str, str], dict[str, Any]]:
    """(A, B) -> statements in package A importing package B, and the files they are in."""
    graph: dict[tuple[str, str], dict[str, Any]] = {}
    for stmt in imports:
        source = package_of(stmt.file.removesuffix(".py").replace("/", "."))
        target = package_of(stmt.text)
        if source is None or target is None:
            continue
        entry = graph.setdefault((source, target), {"statements": 0, "function_level": 0, "files": []})
        entry["statements"] += 1
        entry["function_level"] += stmt.in_function
        if stmt.file not in entry["files"]:
            entry["files"].append(stmt.file)
    return graph


def simple_cycles(nodes: list[str], edges: set[tuple[str, str]]) -> list[list[str]]:
    """Every elementary cycle of a small graph (self-loops ignored), each starting at its smallest node."""
    cycles: list[list[str]] = []
    for size in range(2, len(nodes) + 1):
        for combo in itertools.permutations(nodes, size):
            if combo[0] != min(combo):
                continue
            if all((combo[i], combo[(i + 1) % size]) in edges for i in range(size)):
                cycles.append(list(combo))
    return cycles


def tarjan_scc(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components (Tarjan, iterative), each sorted, in discovery order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, pending = work[-1]
            if pending:
                succ = pending.pop(0)
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, sorted(graph.get(succ, ()))))
                elif succ in on_stack:
                    low[node] = min(low[node], index[succ])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def file_cycles(imports: list[ImportStmt], modules: dict[str, Module], implied: bool = True) -> list[dict[str, Any]]:
    """Import cycles among project files: the SCCs of more than one module, with their internal edges.

    With ``implied=False`` the edges to the ``__init__.py`` of packages above an imported module are left out.
    """
    by_path = {module.path: name for name, module in modules.items()}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    edge_info: dict[tuple[str, str], dict[str, Any]] = {}
    for stmt in imports:
        source = by_path[stmt.file]
        for target, only_implied in stmt.targets.items():
            if target == source or (only_implied and not implied):
                continue
            graph[source].add(target)
            info = edge_info.setdefault(
                (source, target), {"lines": [], "function_lines": [], "function": True, "implied": True}
            )
            info["lines"].append(stmt.line)
            if stmt.in_function:
                info["function_lines"].append(stmt.line)
            info["function"] = info["function"] and stmt.in_function
            info["implied"] = info["implied"] and only_implied
    cycles = []
    for component in tarjan_scc(graph):
        if len(component) < 2:
            continue
        members = set(component)
        edges = [
            {"from": modules[a].path, "to": modules[b].path, **edge_info[(a, b)]}
            for a in component
            for b in sorted(graph[a] & members)
        ]
        cycles.append({"files": [modules[name].path for name in component], "edges": edges})
    return cycles


def measure(root: Path) -> dict[str, Any]:
    """All six measures, as plain data (what --json prints)."""
    modules, skipped = load_modules(root)
    imports: list[ImportStmt] = []
    functions: list[Function] = []
    for module in modules.values():
        walker = _Walker(module, modules)
        walker.visit(module.tree)
        imports += walker.imports
        functions += walker.functions

    pkg_graph = package_graph(imports)
    cross_edges = {pair for pair in pkg_graph if pair[0] != pair[1]}

    in_function = [stmt for stmt in imports if stmt.in_function]
    project_in_function = [stmt for stmt in in_function if package_of(stmt.text)]

    long_candidates = [f for f in functions if f.file.split("/")[0] in LONG_FUNCTION_PACKAGES]
    longest = sorted(long_candidates, key=lambda f: (-f.lines, f.file, f.line))

    module_lines = {m.path: len(m.source.splitlines()) for m in modules.values()}
    noqa = {m.path: len(NOQA_E402.findall(m.source)) for m in modules.values()}

    return {
        "root": str(root),
        "files": len(modules),
        "unparsable_files": skipped,
        "package_graph": [
            {"from": a, "to": b, **pkg_graph[(a, b)]} for a in PACKAGES for b in PACKAGES if (a, b) in pkg_graph
        ],
        "package_cycles": simple_cycles(list(PACKAGES), cross_edges),
        "file_cycles": file_cycles(imports, modules),
        "file_cycles_without_implied": file_cycles(imports, modules, implied=False),
        "function_imports": {
            "total": len(in_function),
            "project": len(project_in_function),
            "project_list": [
                {"file": s.file, "line": s.line, "module": s.text}
                for s in sorted(project_in_function, key=lambda s: (s.file, s.line))
            ],
        },
        "longest_functions": {
            "packages": list(LONG_FUNCTION_PACKAGES),
            "top": [
                {"file": f.file, "name": f.name, "line": f.line, "lines": f.lines} for f in longest[:TOP_FUNCTIONS]
            ],
            **{f"over_{n}": sum(f.lines > n for f in long_candidates) for n in FUNCTION_THRESHOLDS},
        },
        "long_modules": [
            {"file": path, "lines": n}
            for path, n in sorted(module_lines.items(), key=lambda kv: -kv[1])
            if n > LONG_MODULE_LINES
        ],
        "noqa_e402": {"total": sum(noqa.values()), "by_file": {p: n for p, n in sorted(noqa.items()) if n}},
    }


def _render_components(components: list[dict[str, Any]]) -> list[str]:
    """Text lines for file-level SCCs: the members, then each internal edge with its lines and marks."""
    out: list[str] = [] if components else ["none", ""]
    for i, component in enumerate(components, 1):
        out.append(f"SCC {i} ({len(component['files'])} files): {', '.join(component['files'])}")
        for e in component["edges"]:
            marks = [mark for mark in ("function", "implied") if e[mark]]
            lines = ",".join(f"{n}*" if n in e["function_lines"] else str(n) for n in e["lines"])
            out.append(f"- {e['from']} -> {e['to']} (line {lines})" + (f" [{', '.join(marks)}]" if marks else ""))
        out.append("")
    return out


def render_text(m: dict[str, Any]) -> str:
    """The measures as readable text, one section per measure."""
    out: list[str] = [f"# Centre metrics ({m['files']} files under {', '.join(PACKAGES)})", ""]
    if m["unparsable_files"]:
        out += [f"Skipped (syntax error): {', '.join(m['unparsable_files'])}", ""]

    out += ["## 1. Package import graph (import statements in A importing B)", ""]
    counts = {(e["from"], e["to"]): e["statements"] for e in m["package_graph"]}
    out.append("| A \\ B | " + " | ".join(PACKAGES) + " |")
    out.append("|---" * (len(PACKAGES) + 1) + "|")
    for a in PACKAGES:
        out.append(f"| {a} | " + " | ".join(str(counts.get((a, b), 0)) for b in PACKAGES) + " |")
    out.append("")
    for e in m["package_graph"]:
        if e["from"] == e["to"]:
            continue
        out.append(
            f"- {e['from']} -> {e['to']}: {e['statements']} imports ({e['function_level']} in functions) "
            f"in {len(e['files'])} files ({', '.join(e['files'])})"
        )
    out.append("")
    cycles = m["package_cycles"]
    out.append("Package-level cycles (self-edges ignored): " + (str(len(cycles)) if cycles else "none"))
    out += [f"- {' -> '.join(c + [c[0]])}" for c in cycles]
    out.append("")

    out += ["## 2. File-level import cycles (strongly connected components of more than one file)", ""]
    out += _render_components(m["file_cycles"])
    out += [
        "Marks: function = every import making the edge is inside a function body; "
        "implied = the edge is only the __init__.py of a package above the imported module; "
        "line N* = an import inside a function body.",
        "",
    ]
    out += ["### 2b. The same, leaving out the implied edges (explicitly named modules only)", ""]
    out += _render_components(m["file_cycles_without_implied"])

    fi = m["function_imports"]
    out += ["## 3. Imports inside function/method bodies", ""]
    out.append(f"All in-function imports (third-party included): {fi['total']}")
    out.append(f"In-function imports of project packages: {fi['project']}")
    out += [f"- {s['file']}:{s['line']} {s['module']}" for s in fi["project_list"]]
    out.append("")

    lf = m["longest_functions"]
    out += [f"## 4. Longest functions/methods ({', '.join(lf['packages'])})", ""]
    out += ["| # | function | lines |", "|---|---|---|"]
    out += [f"| {i} | {f['file']}:{f['name']} | {f['lines']} |" for i, f in enumerate(lf["top"], 1)]
    out.append("")
    out += [f"Functions over {n} lines: {lf[f'over_{n}']}" for n in FUNCTION_THRESHOLDS]
    out.append("")

    out += [f"## 5. Modules over {LONG_MODULE_LINES} lines", ""]
    out += [f"- {e['file']}: {e['lines']}" for e in m["long_modules"]] or ["none"]
    out.append("")

    nq = m["noqa_e402"]
    out += ["## 6. `# noqa: E402`", "", f"Total: {nq['total']}"]
    out += [f"- {path}: {n}" for path, n in nq["by_file"].items()]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root (default: the cwd)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    metrics = measure(args.root.resolve())
    sys.stdout.write(json.dumps(metrics, indent=2) + "\n" if args.json else render_text(metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
