"""The layout docs/adding-an-op.md promises: one name per op family in every folder, each op declared with its
argument check, its reference and the backends that serve it, and no import circles in sam3lt/ or bench/."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sam3lt.kernels
import sam3lt.ops as ops
from sam3lt.ops import _backend

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("family", sam3lt.kernels.FAMILIES)
def test_a_family_has_one_name_in_every_folder(family):
    for path in (f"sam3lt/ops/{family}.py", f"kernels/{family}.py", f"tests/test_{family}.py",
                 f"bench/ops/bench_{family}.py"):
        assert (ROOT / path).is_file(), f"{family}: {path} is missing"


@pytest.mark.parametrize("op", sorted(_backend._REGISTRY))
def test_every_op_is_declared_with_its_check_reference_and_backends(op):
    assert op in _backend._CHECKS, f"{op}: no define(op, check_args)"
    # every op has GPU kernels but the conv family's, CPU kernels whose GPU path is the reference (cuDNN)
    conv_family = ("conv1x1", "conv3x3", "conv_patch", "conv_transpose2x2")
    expected = {"eager", "cpu"} if op in conv_family else {"eager", "triton", "cuda"}
    assert expected <= set(_backend._REGISTRY[op]), sorted(_backend._REGISTRY[op])
    assert _backend._REGISTRY[op]["eager"].fn is getattr(ops, f"{op}_reference")
    assert callable(getattr(ops, op)) and op in ops.__all__ and f"{op}_reference" in ops.__all__


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "kernels":  # installed as sam3lt.kernels
        parts.insert(0, "sam3lt")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (top level or inside functions)."""
    files = [p for d in ("sam3lt", "kernels", "bench") for p in (ROOT / d).rglob("*.py")
             if not (p.relative_to(ROOT).parts[:2] == ("sam3lt", "kernels"))]  # a dev symlink to kernels/
    modules = {_module_name(p): p for p in files}
    graph = {}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
                deps.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def test_no_import_circles():
    """A package importing its own submodules is not a circle; any other cycle is."""
    graph, cycles = _import_graph(), set()
    for start in graph:
        stack = [(start, (start,))]
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    ring = path + (start,)
                    if any(not b.startswith(a + ".") for a, b in zip(ring, ring[1:])):
                        cycles.add(" -> ".join(ring))
                elif nxt not in path and len(path) < 6:
                    stack.append((nxt, path + (nxt,)))
    assert not cycles, "\n".join(sorted(cycles))
