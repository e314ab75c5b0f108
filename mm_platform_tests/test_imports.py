"""The package's import graph, read from the source with ``ast`` (nothing is imported).

* No import cycle among ``mm_platform.lib.*`` modules, counting imports inside functions too (a lazy
  import that closes a circle is still a circle a reader has to untangle).
* Stages in data-flow order: a module of ``mm_platform/lib/`` imports only modules of its own stage or of
  an earlier one (:data:`STAGES`), so the folders read left to right like the pipeline.
* Library code stays free of Dagster: nothing under ``mm_platform/lib/`` imports ``dagster`` (or a
  ``dagster_*`` package) or ``mm_platform.defs``.
* Nothing imports an asset module (``mm_platform.defs.<layer>.assets``) except ``mm_platform/definitions.py``:
  the package, the tests and the benchmarks refer to assets by key and take them from the loaded definitions.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import mm_platform

ROOT = Path(mm_platform.__file__).resolve().parent
PACKAGE = "mm_platform"


def _module_name(path: Path) -> str:
    parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, known: Mapping[str, Path]) -> Iterator[str]:
    """Every module ``name`` imports (anywhere in the file): ``import a.b`` -> ``a.b``; ``from a import b``
    -> ``a.b`` when that is a module of the package, else ``a``; relative imports resolved."""
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:  # `if TYPE_CHECKING:` imports never run
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_pkg else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield sub if sub in known else base


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {m: {t for t in _imports(m, p, known) if t in known and t != m} for m, p in known.items()}


def _cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
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
            visit(v)
    return out


def test_cycle_finder_finds_a_circle_and_only_circles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_import_reader_sees_lazy_relative_and_from_imports() -> None:
    graph = _graph()
    assert "mm_platform.lib.features.tabular.numbers" in graph["mm_platform.lib.features.tabular.spec"]  # from-import of a module
    assert "mm_platform.lib.media.audio" in graph["mm_platform.lib.media.audio_header"]  # lazy, inside inspect_audio
    assert "mm_platform.lib.media.errors" in graph["mm_platform.lib.media.audio"]
    # an `if TYPE_CHECKING:` import is for annotations only and never runs
    assert "mm_platform.lib.storage.lake" not in graph["mm_platform.lib.storage.migrate"]


def test_no_import_cycle_among_lib_modules() -> None:
    lib = {m: {t for t in ts if t.startswith("mm_platform.lib.")}
           for m, ts in _graph().items() if m.startswith("mm_platform.lib.")}
    assert _cycles(lib) == []


def test_lib_imports_neither_dagster_nor_defs() -> None:
    known = _modules()
    bad = []
    for m, p in known.items():
        if m == "mm_platform.lib" or m.startswith("mm_platform.lib."):
            for t in _imports(m, p, known):
                top = t.split(".")[0]
                if top == "dagster" or top.startswith("dagster_") or t.startswith("mm_platform.defs"):
                    bad.append(f"{m} imports {t}")
    assert bad == []


#: ``mm_platform/lib/`` stages in data-flow order. The foundation (settings, device, locks, arrays) is usable by
#: every stage; each later stage may import the ones before it, never one after it.
STAGES: tuple[tuple[str, ...], ...] = (
    ("settings", "device", "locks", "arrays"),
    ("storage",),
    ("media",),
    ("landing",),
    ("features",),
    ("encoders",),
    ("compute",),
    ("vectors",),
    ("analysis",),
    ("search",),
)


def _stage(module: str) -> int | None:
    parts = module.split(".")
    if parts[:2] != ["mm_platform", "lib"] or len(parts) < 3:
        return None
    for rank, names in enumerate(STAGES):
        if parts[2] in names:
            return rank
    raise AssertionError(f"{module} is in no stage: add mm_platform/lib/{parts[2]} to STAGES")


def test_lower_stages_never_import_higher_ones() -> None:
    bad = []
    for m, targets in sorted(_graph().items()):
        own = _stage(m)
        if own is None:
            continue
        for t in sorted(targets):
            other = _stage(t)
            if other is not None and other > own:
                bad.append(f"{m} ({STAGES[own][0]}) imports {t} ({STAGES[other][0]})")
    assert bad == []


ENTRY_POINT = "mm_platform.definitions"
SOURCE_ROOTS = (ROOT, ROOT.parent / "mm_platform_tests", ROOT.parent / "bench")


def _is_asset_module(module: str) -> bool:
    parts = module.split(".")
    return len(parts) == 4 and parts[:2] == ["mm_platform", "defs"] and parts[3] == "assets"


def _asset_module_importers(files: Mapping[str, Path], known: Mapping[str, Path]) -> list[str]:
    return sorted(f"{name} imports {target}" for name, path in files.items() if name != ENTRY_POINT
                  for target in _imports(name, path, known) if _is_asset_module(target))


def test_only_the_definitions_import_asset_modules() -> None:
    known = _modules()
    files = dict(known)
    for root in SOURCE_ROOTS[1:]:
        files.update({f"{root.name}.{'.'.join(p.relative_to(root).with_suffix('').parts)}": p
                      for p in sorted(root.rglob("*.py"))})
    assert any(_is_asset_module(t) for t in _imports(ENTRY_POINT, known[ENTRY_POINT], known))
    assert _asset_module_importers(files, known) == []


def test_asset_module_check_sees_both_import_forms(tmp_path: Path) -> None:
    known = _modules()
    a = tmp_path / "a.py"
    a.write_text("from mm_platform.defs.clusters import assets\n")
    b = tmp_path / "b.py"
    b.write_text("def f():\n    from mm_platform.defs.raw.assets import raw_records\n")
    c = tmp_path / "c.py"
    c.write_text("from mm_platform.defs.raw.sensors import BATCH_JOB_NAME\n")
    assert _asset_module_importers({"x.a": a, "x.b": b, "x.c": c}, known) == [
        "x.a imports mm_platform.defs.clusters.assets", "x.b imports mm_platform.defs.raw.assets"]
