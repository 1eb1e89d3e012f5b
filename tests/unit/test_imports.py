"""The package's import graph has no cycle, importing lsdc changes nothing in the process,
and the light modules stay light."""
import ast
import os
import subprocess
import sys

import pytest

PKG = os.path.join(os.path.dirname(__file__), "..", "..", "lsdc")


def _modules():
    for root, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, f), PKG)[:-3].replace(os.sep, ".")
                yield "lsdc" + ("" if rel == "__init__" else "." + rel.replace(".__init__", "")), os.path.join(root, f)


def _module_level_imports(name: str, path: str) -> set[str]:
    tree = ast.parse(open(path).read())
    is_pkg = path.endswith("__init__.py")
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    out = set()
    for node in tree.body:                      # module level only: not inside functions
        if isinstance(node, ast.ImportFrom) and node.level:
            target = base[:len(base) - node.level + 1]
            mod = ".".join(target + ([node.module] if node.module else []))
            if node.module:                     # "from . import x" imports lsdc.x, not a cycle through lsdc
                out.add(mod)
            for a in node.names:
                out.add(f"{mod}.{a.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lsdc"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("lsdc")}
    return out


def test_no_import_cycle_at_module_level():
    mods = dict(_modules())
    graph = {m: {d for d in _module_level_imports(m, p) if d in mods and d != m} for m, p in mods.items()}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for d in graph[m]:
            if state.get(d) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack + [m, d]))
            if d not in state:
                visit(d, stack + [m])
        state[m] = 2
    for m in graph:
        if m not in state:
            visit(m, [])
    assert "lsdc.harness" not in mods          # the runner is split by job (lsdc/runner)


@pytest.mark.pipeline
def test_importing_every_module_changes_no_environment_variable():
    names = sorted(m for m, _ in _modules() if not m.endswith("__main__"))   # __main__ runs the CLI
    code = ("import os, importlib, json; before = dict(os.environ)\n"
            "import ray, ray.tune, torch, optuna\n"                # their own import-time effects are theirs
            "mid = dict(os.environ)\n"
            f"[importlib.import_module(m) for m in {names!r}]\n"
            "after = dict(os.environ)\n"
            "print(json.dumps(sorted(set(after.items()) ^ set(mid.items()))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_config_and_tables_import_neither_torch_nor_ray():
    code = "import lsdc.config, lsdc.tables, lsdc.keys, lsdc.planning, sys; " \
           "assert 'torch' not in sys.modules and 'ray' not in sys.modules, 'heavy import'"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
