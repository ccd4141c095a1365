"""The public namespace is explicit: `gradxform/__init__.py` re-exports each public name by name,
lists them in a literal `__all__`, and no module name shadows a public name or reaches into
another module's private names."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

import gradxform

PACKAGE = Path(gradxform.__file__).resolve().parent
INIT = ast.parse((PACKAGE / "__init__.py").read_text(), filename="gradxform/__init__.py")
MODULES = sorted(PACKAGE.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _literal_all(tree: ast.Module) -> list[str]:
    """The value of `__all__`, which must be a literal list of strings assigned once."""
    values = [node.value for node in tree.body if isinstance(node, ast.Assign)
              and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)]
    assert len(values) == 1, "__all__ must be assigned exactly once"
    value = values[0]
    assert isinstance(value, ast.List), "__all__ must be a literal list"
    assert all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in value.elts), (
        "__all__ must list names as string literals")
    return [e.value for e in value.elts]


# The public submodules: gradxform/<name>.py without a leading underscore (and the package's
# __main__). __init__ imports each, so that `import gradxform` makes them attributes.
PUBLIC_SUBMODULES = sorted(path.stem for path in PACKAGE.glob("*.py")
                           if not path.stem.startswith("_"))


def _imported_submodules() -> list[str]:
    return [alias.name for node in INIT.body
            if isinstance(node, ast.ImportFrom) and node.module == "gradxform"
            for alias in node.names]


def test_every_public_submodule_is_an_attribute_of_the_package():
    assert "tree_utils" in PUBLIC_SUBMODULES and "schedules" in PUBLIC_SUBMODULES
    assert sorted(_imported_submodules()) == PUBLIC_SUBMODULES
    for name in PUBLIC_SUBMODULES:
        assert getattr(gradxform, name).__name__ == f"gradxform.{name}"
        assert name not in gradxform.__all__  # modules, not public names


def test_all_is_a_literal_list_of_exactly_the_imported_names():
    listed = _literal_all(INIT)
    imported = [alias.asname or alias.name for node in INIT.body
                if isinstance(node, ast.ImportFrom) and node.module not in ("__future__",
                                                                           "gradxform")
                for alias in node.names]
    assert len(set(listed)) == len(listed), "__all__ lists a name twice"
    assert len(set(imported)) == len(imported), "__init__ imports a name twice"
    assert sorted(listed) == sorted(imported), (
        f"imported but not in __all__: {sorted(set(imported) - set(listed))}; "
        f"in __all__ but not imported: {sorted(set(listed) - set(imported))}")
    assert listed == gradxform.__all__
    assert all(hasattr(gradxform, name) for name in listed)


def test_init_only_re_exports():
    """No definitions in `__init__`: each public name lives in the module that owns its idea."""
    defined = [node.name for node in INIT.body
               if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef)]
    assert defined == []


@pytest.mark.parametrize("name", gradxform.__all__)
def test_no_public_name_is_also_a_submodule(name):
    assert importlib.util.find_spec("gradxform." + name) is None, (
        f"gradxform.{name} is both a public name and a submodule")


def test_no_module_is_named_like_a_public_name():
    public = set(gradxform.__all__)
    clashes = [str(path.relative_to(PACKAGE.parent)) for path in MODULES
               if path.stem in public or (path.name == "__init__.py"
                                          and path.parent.name in public)]
    assert clashes == []


def _is_module(dotted: str) -> bool:
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _private_imports(path: Path) -> list[str]:
    """Underscore names that `path` imports from, or reads off, another gradxform module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    this = _module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found, modules = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            if source.split(".")[0] != "gradxform":
                continue
            for alias in node.names:
                if alias.name.startswith("_"):
                    found.append(f"line {node.lineno}: from {source} import {alias.name}")
                elif _is_module(f"{source}.{alias.name}"):
                    modules.add(alias.asname or alias.name)  # a module, read below
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "gradxform" and alias.asname:
                    modules.add(alias.asname)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in modules and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names():
    found = {str(path.relative_to(PACKAGE.parent)): _private_imports(path) for path in MODULES}
    assert {path: names for path, names in found.items() if names} == {}
