"""The package's layers: the import graph has no cycles, the CTM model imports nothing from SB3 or the layers
above it, and an installed wheel holds ``ctm_rl`` as its only top-level package."""

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Where each installed package's source sits in the repository.
SOURCES = {"ctm_rl": ROOT / "ctm_rl", "ctm_rl.envs": ROOT / "envs", "ctm_rl.agents": ROOT / "agents"}


def _modules() -> dict[str, Path]:
    modules = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts))
            if name.startswith("ctm_rl.envs") and package == "ctm_rl" or name.startswith("ctm_rl.agents") and package == "ctm_rl":
                continue
            modules[name.removesuffix(".__init__")] = path
    return modules


def _imports(path: Path, name: str) -> set[str]:
    """Every module a file imports, at any depth in the file (lazy imports inside functions count too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {imported for imported in _imports(path, name) if imported in modules and imported != name}
            for name, path in modules.items()}


def test_the_import_graph_has_no_cycles():
    graph = _graph()
    # Lazy names in ctm_rl/__init__.py are resolved on attribute access; its own imports are only `errors`.
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, f"import cycles: {cycles}"


def test_the_model_layer_imports_only_torch_and_itself():
    allowed_outside = {"torch", "numpy", "math", "typing", "dataclasses", "inspect", "__future__", "collections"}
    for name, path in _modules().items():
        if not name.startswith("ctm_rl.model"):
            continue
        for imported in _imports(path, name):
            top = imported.split(".")[0]
            if top == "ctm_rl":
                assert imported.startswith(("ctm_rl.model", "ctm_rl.errors")), f"{name} imports {imported}"
            else:
                assert top in allowed_outside, f"{name} imports {imported}"


def test_importing_the_model_loads_no_sb3_or_gymnasium():
    code = ("import sys, ctm_rl.model.ctm, ctm_rl.model.compiled, ctm_rl.model.reference; "
            "print(sorted(m for m in ('stable_baselines3', 'sb3_contrib', 'gymnasium') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_a_built_wheel_installs_only_the_ctm_rl_package(tmp_path):
    pytest.importorskip("setuptools")
    source = tmp_path / "source"
    source.mkdir()
    for item in ("pyproject.toml", "README.md", "ctm_rl", "envs", "agents"):
        target = source / item
        if (ROOT / item).is_dir():
            import shutil

            shutil.copytree(ROOT / item, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.write_bytes((ROOT / item).read_bytes())
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("ctm_rl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")} == {"ctm_rl"}
    assert {"ctm_rl/agents/ctm.yml", "ctm_rl/agents/lstm.yml", "ctm_rl/envs/factory.py",
            "ctm_rl/model/ctm.py", "ctm_rl/sb3/policy.py"} <= set(names)
