"""The architecture rules, checked on the import graph of every project .py file (see DEVELOPERS.md).

The graph: one node per module (``pkg/__init__.py`` is the node ``pkg``). An edge for every ``import`` statement,
at module level or inside a function or class: ``import a.b.c`` and ``from a.b import c`` point at the most
specific project module they name (``a.b.c`` when it is a module, else ``a.b``); relative imports are resolved
first. Importing a submodule also runs its parent packages' ``__init__``, but that is not an edge: a package
``__init__`` that imports its own submodules is how packages work, and a cycle appears only when a module imports
(names from) a package ``__init__`` that imports it back.

Rules:

1. no import cycle anywhere;
2. ``audio2lp`` never imports ``training``; ``lp_renderer`` imports neither ``audio2lp`` nor ``training``, and no
   ``lp_renderer`` source mentions ``audio2lp`` (the renderer does not know its caller);
3. only the front doors (``audio2lp/apps/``, ``training/cli.py`` and the two ``__main__.py``) print, exit, parse
   arguments, configure logging, set torch's thread count or write the environment; the exceptions are listed
   with their reason;
4. no .py file is longer than 600 lines unless its module docstring says why in its first lines
   ("Longer than 600 lines because ...");
5. importing ``audio2lp``, ``lp_renderer`` or the command line's module changes no process state: it does not load
   torch (so a front door can set the CPU memory options first) and writes no environment variable.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("audio2lp", "lp_renderer", "training")
ROOTS = PACKAGES + ("tests", "benchmarks", "examples")
MAX_LINES = 600
FRONT_DOORS = ("audio2lp/apps/", "audio2lp/__main__.py", "training/cli.py", "training/__main__.py")

#: (file, call) -> why it may set process state although it is not a front door
ALLOWED_STATE = {
    ("audio2lp/models/threads.py", "torch.set_num_threads"):
        "a scoped thread count for the small models, always restored (torch_threads)",
    ("training/motion/trainer.py", "torch.set_num_threads"):
        "run.num_threads is part of the run's config, which under DDP only rank 0's copy settles",
    ("training/motion/prepare.py", "torch.set_num_threads"):
        "the initializer of prepare's worker processes sets up their own process",
    ("training/motion/prepare.py", "logging.basicConfig"):
        "the initializer of prepare's worker processes sets up their own process",
    ("lp_renderer/fast/cpu_memory.py", "os.environ"):
        "THP_MEM_ALLOC_ENABLE, set only when a front door calls apply_cpu_memory_settings (opt-in)",
}
STATE_CALLS = {"print", "sys.exit", "os._exit", "exit", "quit", "logging.basicConfig", "torch.set_num_threads",
               "os.putenv", "os.environ.setdefault", "os.environ.update", "os.environ.pop", "os.environ.clear"}


def project_files(roots=ROOTS) -> dict[str, Path]:
    """Module name -> file, for every .py file under ``roots``."""
    out = {}
    for root in roots:
        for path in sorted((REPO / root).rglob("*.py")):
            if "node_modules" in path.parts:
                continue
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that ``module`` imports (see the module docstring for the rule)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()

    def target(name: str) -> str | None:
        parts = name.split(".")
        while parts and ".".join(parts) not in modules:
            parts.pop()
        return ".".join(parts) if parts else None

    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                base = ".".join(anchor + ([node.module] if node.module else []))
            names = [f"{base}.{a.name}" for a in node.names] or [base]
        for name in names:
            t = target(name)
            if t is not None and t != module:
                found.add(t)
    return found


def import_graph(roots=ROOTS) -> dict[str, set[str]]:
    modules = project_files(roots)
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
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

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _call_name(node: ast.Call) -> str:
    parts = []
    f = node.func
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    if isinstance(f, ast.Name):
        parts.append(f.id)
    return ".".join(reversed(parts))


def state_changes(path: Path) -> set[str]:
    """The process-state calls of a file: prints, exits, argparse, logging set-up, torch threads, environment
    writes (``os.environ[...] = ...`` counts as ``os.environ``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _call_name(node)
            if name in STATE_CALLS:
                found.add("os.environ" if name.startswith("os.environ") or name == "os.putenv" else name)
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for t in targets:
                if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Attribute) and \
                        t.value.attr == "environ":
                    found.add("os.environ")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if "argparse" in names:
                found.add("argparse")
    return found


# ------------------------------------------------------------------------------------------ the rules
def test_the_graph_sees_function_level_and_relative_imports():
    g = import_graph()
    assert "lp_renderer.nets.networks" in g["lp_renderer.weights"]  # a function-level import
    assert "lp_renderer.nets.blocks" in g["lp_renderer.nets.spade_decoder"]  # a relative one
    assert "audio2lp.apps.doctor" in g["audio2lp.apps.cli"]  # `from audio2lp.apps import doctor` names the module


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, f"import cycles: {found}"


def test_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_layers():
    g = import_graph(PACKAGES)
    bad = [(m, d) for m, deps in g.items() for d in deps
           if (_in(m, "audio2lp") and _in(d, "training"))
           or (_in(m, "lp_renderer") and (_in(d, "audio2lp") or _in(d, "training")))]
    assert not bad, f"imports against the layering (lp_renderer <- audio2lp <- training): {bad}"


def test_lp_renderer_does_not_name_its_caller():
    named = [str(p.relative_to(REPO)) for p in (REPO / "lp_renderer").rglob("*.py")
             if "audio2lp" in p.read_text(encoding="utf-8").lower()]
    assert not named, f"lp_renderer sources that name audio2lp: {named}"


def test_only_front_doors_set_process_state():
    bad = []
    for path in project_files(PACKAGES).values():
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith(FRONT_DOORS):
            continue
        for call in sorted(state_changes(path)):
            if (rel, call) not in ALLOWED_STATE:
                bad.append(f"{rel}: {call}")
    assert not bad, "process state outside the front doors (audio2lp/apps/, training/cli.py): " + ", ".join(bad)


def test_state_scanner_sees_what_it_must():
    src = ("import argparse, os, sys, torch, logging\nprint('x')\nos.environ['A'] = '1'\n"
           "os.environ.setdefault('B', '1')\ntorch.set_num_threads(1)\nlogging.basicConfig()\nsys.exit(0)\n")
    tmp = REPO / "tests" / ".state_probe.py"
    try:
        tmp.write_text(src, encoding="utf-8")
        assert state_changes(tmp) == {"argparse", "print", "os.environ", "torch.set_num_threads",
                                      "logging.basicConfig", "sys.exit"}
    finally:
        tmp.unlink(missing_ok=True)


def test_file_length():
    long = []
    for path in project_files().values():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n <= MAX_LINES:
            continue
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        if "longer than 600 lines because" not in " ".join(doc.split("\n\n")[0:2]).lower():
            long.append(f"{path.relative_to(REPO)} ({n} lines)")
    assert not long, f"files over {MAX_LINES} lines without a reason in their docstring: {long}"


@pytest.mark.parametrize("module", ["audio2lp", "lp_renderer", "audio2lp.apps.cli", "training.cli"])
def test_importing_changes_no_process_state(module):
    code = (f"import os, sys; before = dict(os.environ); import {module}; "
            "assert 'torch' not in sys.modules, 'torch was imported'; "
            "assert dict(os.environ) == before, 'the environment changed'")
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
