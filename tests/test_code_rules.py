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
# what a write may go to: atomic_path's temporary name, an in-memory buffer, or rcic's own
# atomic writer of profile tables (rcic.profiles.write_table)
SAFE = {"tmp", "buf", "profiles"}


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
        w for p in sorted(SRC.glob("*.py")) if p.name != "fileio.py" for w in _direct_writes(p)
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
    for path in sorted(SRC.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > 50:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "\n".join(long)


def test_every_entry_point_rcic_advertises_resolves():
    """`import rcic` lists its entry points in `__all__`; each must load from the module named."""
    import rcic

    for name in rcic.__all__:
        assert getattr(rcic, name) is not None, name
    assert rcic.pack.__module__ == "rcic.packing"


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
