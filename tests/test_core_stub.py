"""python/awqkit/_core.pyi names exactly what the native module exposes (mypy reads the stub)."""

from __future__ import annotations

import ast
from pathlib import Path

import awqkit
from awqkit import _core


def _stub_names(tree: ast.Module) -> tuple[set[str], dict[str, set[str]]]:
    top, members = set(), {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            top.add(node.name)
        elif isinstance(node, ast.ClassDef):
            top.add(node.name)
            members[node.name] = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
    return top, members


def test_stub_lists_every_native_function_and_class():
    stub = Path(awqkit.__file__).with_name("_core.pyi")
    top, members = _stub_names(ast.parse(stub.read_text(encoding="utf-8")))
    native = {n for n in dir(_core) if not n.startswith("__")}
    assert top == native, f"missing from the stub: {sorted(native - top)}; not in _core: {sorted(top - native)}"
    for cls, names in members.items():
        own = {n for n in vars(getattr(_core, cls)) if not n.startswith("__") and not n.startswith("_pybind11")}
        assert own <= names, f"{cls}: missing from the stub: {sorted(own - names)}"
