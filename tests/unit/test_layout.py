"""The layout of DESIGN.md section 2, checked: imports point down the layers, no two files import each
other (directly or round a loop), and no source file passes 400 lines. Lazy imports inside functions count."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# lowest first; a package may import its own modules and those of any package before it
LAYERS = ["model", "onlooker_kernels", "perception", "memory", "reasoning", "tui", "assistant", "bench"]
RANK = {name: i for i, name in enumerate(LAYERS)}
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in LAYERS + ["tests"]:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path, module: str, known: dict[str, Path]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:
                base = ".".join(module.split(".")[:-node.level] + [node.module])
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for n in names:
            while n and n not in known:
                n = n.rpartition(".")[0]
            if n and n != module:
                found.add(n)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(p, m, mods) for m, p in mods.items() if not m.startswith("tests")}


def test_imports_point_down_the_layers():
    bad = []
    for mod, deps in _graph().items():
        for dep in deps:
            a, b = mod.split(".")[0], dep.split(".")[0]
            if b in RANK and RANK[b] > RANK[a]:
                bad.append(f"{mod} -> {dep}")
    assert not bad, "imports that point up:\n" + "\n".join(sorted(bad))


def test_kernels_import_only_model_and_model_nothing():
    g = _graph()
    assert all(d.split(".")[0] in ("onlooker_kernels", "model")
               for m, ds in g.items() if m.startswith("onlooker_kernels") for d in ds)
    assert all(d.startswith("model") for m, ds in g.items() if m.startswith("model") for d in ds)


def test_no_import_cycle_between_files():
    g = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:                      # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in g:
                continue
            if w not in index:
                visit(w)
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
                cycles.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_no_source_file_over_400_lines():
    long = [f"{p.relative_to(ROOT)}: {n}" for p in _modules().values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, long


def test_the_layout_check_can_fail(tmp_path):
    """The checker itself: an upward import is found."""
    f = tmp_path / "x.py"
    f.write_text("import assistant.cli\nfrom memory import manager\n")
    assert _imports(f, "model.x", _modules()) == {"assistant.cli", "memory", "memory.manager"}


def test_no_top_level_package_shadows_an_installed_distribution():
    """Our top-level packages sit first on the path (the editable install, the repository root), so one named like an
    installed distribution's package would hide it: `kernels` hid Hugging Face's `kernels`, which transformers >= 5.25
    requires and imports, and `import transformers` failed."""
    from importlib.metadata import packages_distributions
    provided = packages_distributions()
    clashes = {pkg: provided[pkg] for pkg in LAYERS if set(provided.get(pkg, [])) - {"onlooker"}}
    assert not clashes, clashes
