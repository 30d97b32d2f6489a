"""Rules of the code base that a reviewer would otherwise check by hand."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "rcic"
WRITERS = {
    "write_text",
    "write_bytes",
    "to_csv",
    "to_parquet",
    "to_json",
    "savefig",
    "save",
    "savez",
    "savez_compressed",
    "write_table",
    "dump",
}
# the one file rcic appends to line by line: an epoch's metrics, a log rather than an output
APPENDS = {("runs.py", "metrics")}
# what a write may go to: atomic_path's temporary name, a writer opened on it (the Parquet row
# groups of rcic.data.tables.write_row_groups), an in-memory buffer, or rcic's own atomic writer
# of profile tables (rcic.data.tables.write_table)
SAFE = {"tmp", "tmp_writer", "buf", "tables"}


def _names(call: ast.Call) -> set[str]:
    """The plain names a call hands over: the object it is called on (``tmp.write_text(...)``) and
    its positional arguments (``np.savez(tmp, ...)``)."""
    nodes = [call.func.value] if isinstance(call.func, ast.Attribute) else []
    return {n.id for n in nodes + list(call.args) if isinstance(n, ast.Name)}


def _direct_writes(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        names = _names(node)
        if isinstance(f, ast.Attribute) and f.attr in WRITERS and not names & SAFE:
            found.append(f"{path.name}:{node.lineno} {ast.unparse(f)}")
        if isinstance(f, ast.Name) and f.id == "open" and len(node.args) > 1:
            mode = node.args[1].value if isinstance(node.args[1], ast.Constant) else "?"
            target = ast.unparse(node.args[0]).split(".")[-1]
            if set(mode) & set("wax?") and (path.name, target) not in APPENDS:
                found.append(f"{path.name}:{node.lineno} open({target}, {mode!r})")
    return found


def test_every_output_goes_through_a_temporary_name():
    """Outputs are written to the temporary path of rcic.fileio.atomic_path (named `tmp`) and
    renamed, so an interrupted or failing command leaves no half-written file under a final name;
    a write to any other target fails here with its file and line."""
    found = [
        w for p in sorted(SRC.rglob("*.py")) if p.name != "fileio.py" for w in _direct_writes(p)
    ]
    assert not found, "direct writes:\n" + "\n".join(found)


def test_the_rule_catches_a_direct_write(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "def f(out, table):\n"
        "    out.write_text('x')\n"
        "    table.to_csv(out / 'a.csv')\n"
        "    with open(out, 'w') as g:\n"
        "        g.write('x')\n"
    )
    assert len(_direct_writes(bad)) == 3


def test_no_function_is_longer_than_fifty_lines():
    """A function reads on one screen: at most 50 lines, its docstring included."""
    long = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > 50:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "\n".join(long)


def _exception_classes(path: Path) -> list[str]:
    """Classes in `path` that derive from an exception (a base whose name ends in Error)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef):
            bases = [ast.unparse(b).split(".")[-1] for b in node.bases]
            if any(b.endswith(("Error", "Exception")) for b in bases):
                found.append(f"{path.name}:{node.lineno} {node.name}")
    return found


def test_every_error_class_lives_in_errors_py():
    """One error hierarchy in one module: a reader finds every error rcic raises in one place."""
    outside = [
        e for p in sorted(SRC.rglob("*.py")) if p.name != "errors.py" for e in _exception_classes(p)
    ]
    assert not outside, outside
    assert len(_exception_classes(SRC / "errors.py")) >= 10


def test_every_entry_point_rcic_advertises_resolves():
    """`import rcic` lists its entry points in `__all__`; each must load from the module named."""
    import rcic

    for name in rcic.__all__:
        assert getattr(rcic, name) is not None, name
    assert rcic.pack.__module__ == "rcic.data.packing"


def test_no_line_is_kept_from_the_formatter():
    """The 50-line rule is met by functions that do one thing, not by lines packed past the
    formatter: no line in the package, its tests or its benchmarks tells ruff to skip it."""
    root = SRC.parents[1]
    marks = ("fmt: " + "skip", "fmt: " + "off")  # spelled apart, so this file does not match
    kept = [
        f"{path.relative_to(root)}:{n}"
        for folder in ("src", "tests", "benchmarks")
        for path in sorted((root / folder).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if any(m in line for m in marks)
    ]
    assert not kept, "\n".join(kept)


# rcic's layers, bottom first: a module imports from its own layer or those below, never above
LAYERS = (
    {"rcic.errors", "rcic.fileio", "rcic.layout", "rcic.metrics", "rcic.parallel"},
    {"rcic.data"},
    {"rcic.synthetic"},
    {"rcic.training"},
    {"rcic.inference"},
    {"rcic.plates"},
    {"rcic.profiling"},
    {"rcic", "rcic.cli", "rcic.demo", "rcic.pseudo", "rcic.report"},
)


def _module(path: Path, pkg: Path) -> str:
    parts = path.relative_to(pkg.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    """The layer of a module: that of its longest listed prefix."""
    for name in (module.rsplit(".", k)[0] for k in range(module.count(".") + 1)):
        for i, layer in enumerate(LAYERS):
            if name in layer:
                return i
    raise AssertionError(f"{module}: in no layer of LAYERS")


def _imports(path: Path, pkg: Path) -> set[str]:
    """Every module of the package `pkg` that `path` imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "rcic"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "rcic":
            # `from rcic.data import store` imports the module rcic.data.store
            subs = {f"{node.module}.{a.name}" for a in node.names}
            if node.module == "rcic" and {a.name for a in node.names} == {"__version__"}:
                continue  # the installed version, not a module
            found |= {s for s in subs if _exists(s, pkg)} or {node.module}
    return found


def _exists(module: str, pkg: Path) -> bool:
    base = pkg.parent.joinpath(*module.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def _graph(pkg: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, for every module of the package `pkg`."""
    modules = {p: _module(p, pkg) for p in sorted(pkg.rglob("*.py"))}
    return {m: _imports(p, pkg) - {m} for p, m in modules.items()}


def _upward(graph: dict[str, set[str]]) -> list[str]:
    return [f"{m} -> {t}" for m, ts in graph.items() for t in ts if _layer(t) > _layer(m)]


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle among the modules, or []."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == "open":
                return stack[stack.index(t) :] + [t]
            if t in graph and t not in state and (found := visit(t)):
                return found
        state[m] = "done"
        stack.pop()
        return []

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return []


def test_imports_run_down_the_layers_and_never_in_a_cycle():
    """The tree is the design: each subpackage a stage, each importing only from the stages
    below it (the top modules and the package's own lazy entry points aside), and no two modules
    importing each other, directly or around a loop."""
    graph = _graph(SRC)
    assert not _upward(graph), "imports up a layer:\n" + "\n".join(_upward(graph))
    assert not _cycle(graph), "an import cycle: " + " -> ".join(_cycle(graph))


def test_the_layer_rule_catches_an_upward_import_and_a_cycle(tmp_path):
    pkg = tmp_path / "rcic"
    for name, text in {
        "__init__.py": "",
        "errors.py": "",
        "data/__init__.py": "",
        "data/store.py": "from rcic.training import train\n",
        "training/__init__.py": "",
        "training/train.py": "from rcic.training.runs import x\n",
        "training/runs.py": "def f():\n    from rcic.training import train\n",
    }.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    graph = _graph(pkg)
    assert _upward(graph) == ["rcic.data.store -> rcic.training.train"]
    assert set(_cycle(graph)) == {"rcic.training.train", "rcic.training.runs"}
