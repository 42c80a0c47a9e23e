"""The package layout holds: imports run one way, nothing imports a benchmark, no cycles, no
function over 80 lines, and every import made inside a function says why.

Read from the source with :mod:`ast` (nothing is imported). ``python tests/unit/test_layout.py``
prints the same facts as a table: layers, arrows, the largest modules, the longest functions.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "lab_kit"
MAX_FUNCTION_LINES = 80

# layer of each part, lowest first: a module may import its own part or a lower layer
SHARED = {"posts", "json_codec", "metrics", "kafka_settings", "lab_env", "machine", "topics",
          "output_paths", "cli_support"}
SURFACE = {"experiments", "plots", "widgets", "users_panel", "exercises"}
LAYERS = {
    "shared": 0, "broker": 1, "producer": 2, "moderation": 3, "api": 3, "harness": 4,
    "drills": 5, "bench": 5, "surface": 6, "app": 7,
}


def part_of(module: str) -> str:
    """``lab_kit.moderation.service`` -> ``moderation``; root modules by their role."""
    parts = module.split(".")[1:]
    if not parts:
        return "app"
    head = parts[0]
    if head in SHARED:
        return "shared"
    if head in SURFACE:
        return "surface"
    if head in LAYERS:
        return head
    return "app"  # cli, doctor, __main__, the legacy module-name shim


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _target(module: str, node: ast.ImportFrom | ast.Import, is_pkg: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.startswith("lab_kit")]
    base = node.module or ""
    if node.level:
        pkg = module.split(".") if is_pkg else module.split(".")[:-1]
        pkg = pkg[: len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([base] if base else []))
    if not base.startswith("lab_kit"):
        return []
    return [base]


def imports() -> list[tuple[str, str, bool, int, Path]]:
    """(importer, imported module, inside a function?, line, file) for lab_kit's own imports.
    ``from lab_kit.x import y`` counts as an arrow to ``lab_kit.x.y`` when y is a module."""
    mods = modules()
    found = []
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        stack = [(child, False) for child in ast.iter_child_nodes(ast.parse(path.read_text()))]
        while stack:
            node, in_func = stack.pop()
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for base in _target(name, node, is_pkg):
                    targets = [base]
                    if isinstance(node, ast.ImportFrom):
                        subs = [f"{base}.{a.name}" for a in node.names
                                if f"{base}.{a.name}" in mods]
                        targets = subs or [base]
                    found += [(name, t, in_func, node.lineno, path) for t in targets]
            inner = in_func or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            stack += [(child, inner) for child in ast.iter_child_nodes(node)]
    return found


def arrows_up() -> list[str]:
    bad = []
    for src, dst, _, line, path in imports():
        a, b = part_of(src), part_of(dst)
        if a == b:
            continue
        if LAYERS[b] >= LAYERS[a]:
            bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {src} ({a}) imports "
                       f"{dst} ({b})")
    return bad


def cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph = defaultdict(set)
    mods = modules()
    for src, dst, _, _, _ in imports():
        if dst in mods and dst != src and not src.startswith(dst + "."):
            # a package face importing its own files is not a cycle with them
            if not (mods[src].name == "__init__.py" and dst.startswith(src + ".")):
                if not (mods[dst].name == "__init__.py" and src.startswith(dst + ".")):
                    graph[src].add(dst)
    return strong_components(graph)


def folder_cycles() -> list[list[str]]:
    """The same between top-level parts (a folder of lab_kit, or a module at its root),
    counting imports inside functions too: ``drills`` -> ``api_bench`` -> ``drills.nemesis``
    is no cycle between modules, but it is one between the two places a reader opens."""
    graph = defaultdict(set)
    for src, dst, _, _, _ in imports():
        a, b = ".".join(src.split(".")[:2]), ".".join(dst.split(".")[:2])
        if a != b:
            graph[a].add(b)
    return strong_components(graph)


def strong_components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one node."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            strong(v)
    return out


def functions() -> list[tuple[int, str]]:
    out = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((node.end_lineno - node.lineno + 1, f"{name}:{node.name}"))
    return sorted(out, reverse=True)


def test_imports_run_downward():
    assert arrows_up() == []


def test_no_library_module_imports_a_benchmark():
    users = sorted({src for src, dst, *_ in imports()
                    if dst.startswith("lab_kit.bench") and not src.startswith("lab_kit.bench")
                    and part_of(src) != "app"})
    assert users == [], "only the command line may import lab_kit.bench"


def test_no_import_cycles():
    assert cycles() == []
    assert folder_cycles() == []


def test_the_cycle_finder_finds_a_seeded_cycle():
    graph = defaultdict(set, {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert strong_components(graph) == [["a", "b", "c"]]


def test_no_function_over_80_lines():
    long = [f"{n} lines: {f}" for n, f in functions() if n > MAX_FUNCTION_LINES]
    assert long == []


def test_imports_inside_functions_say_why():
    silent = []
    for _, _, in_func, line, path in imports():
        if not in_func:
            continue
        lines = path.read_text().splitlines()
        here, above = lines[line - 1], lines[line - 2] if line >= 2 else ""
        if "#" not in here and not above.strip().startswith("#"):
            silent.append(f"{path.relative_to(PACKAGE.parent)}:{line}")
    assert silent == [], "an import inside a function needs a comment saying why"


def test_every_folder_face_names_its_files():
    for init in PACKAGE.rglob("__init__.py"):
        if init.parent == PACKAGE:
            continue
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        files = [p.stem for p in init.parent.glob("*.py") if p.stem not in ("__init__",
                                                                             "__main__")]
        missing = [f for f in files if f not in doc]
        assert not missing, f"{init.relative_to(PACKAGE.parent)} does not name {missing}"


def test_the_layer_table_checks_something():
    # the checker sees an arrow that runs up when one is there (a seeded example)
    assert LAYERS[part_of("lab_kit.bench.api")] > LAYERS[part_of("lab_kit.harness.http_load")]
    assert part_of("lab_kit.producer.spool") == "producer"
    assert part_of("lab_kit.posts") == "shared"


def report() -> str:
    mods = modules()
    sizes = sorted(((len(p.read_text().splitlines()), n) for n, p in mods.items()),
                   reverse=True)
    imp = imports()
    inner = sum(1 for _, _, in_func, _, _ in imp if in_func)
    lines = [f"modules: {len(mods)}, lines: {sum(n for n, _ in sizes)}",
             f"imports of lab_kit inside lab_kit: {len(imp)} ({inner} inside functions)",
             f"arrows that run up: {len(arrows_up())}", f"cycles: {len(cycles())}",
             f"cycles between top-level parts: {folder_cycles()}",
             "largest modules:"]
    lines += [f"  {n:5d}  {m}" for n, m in sizes[:10]]
    lines.append("longest functions:")
    lines += [f"  {n:5d}  {f}" for n, f in functions()[:10]]
    by_part = defaultdict(list)
    for m in mods:
        by_part[part_of(m)].append(m)
    lines.append("layers (lowest first):")
    for part, layer in sorted(LAYERS.items(), key=lambda kv: kv[1]):
        lines.append(f"  {layer} {part:10s} {len(by_part[part])} modules")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
    for a in arrows_up():
        print("UP:", a)
    for c in cycles():
        print("CYCLE:", " -> ".join(c))
