"""The public API is typed, and mypy finds no error in the package (configured in pyproject)."""

from __future__ import annotations

import dataclasses
import enum
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import gradxform
from gradxform import (
    checkpoint,
    microbatching,
    projections,
    schedules,
    sharding,
    testing,
    tree,
    tree_utils,
)

ROOT = Path(__file__).resolve().parent.parent


def _unannotated(obj) -> list[str]:
    """The parameters (and "return") of a public object's signature that have no annotation.

    Transformations and schedules are dataclasses, whose fields are annotated by construction;
    states are NamedTuples, checked field by field; other classes by their `__init__`.
    """
    if inspect.isclass(obj):
        if dataclasses.is_dataclass(obj) or issubclass(obj, enum.Enum):
            return []  # fields annotated by construction; enum members are not constructed
        if issubclass(obj, tuple) and hasattr(obj, "_fields"):
            annotations = inspect.get_annotations(obj)
            return [name for name in obj._fields if name not in annotations]
        init = next((k.__dict__["__init__"] for k in obj.__mro__ if "__init__" in k.__dict__),
                    object.__init__)
        if init is object.__init__:
            return []
        obj = init
    signature = inspect.signature(obj)
    missing = [name for name, p in signature.parameters.items()
               if name not in ("self", "cls") and p.annotation is inspect.Parameter.empty]
    if signature.return_annotation is inspect.Signature.empty:
        missing.append("return")
    return missing


@pytest.mark.parametrize("module", [gradxform, checkpoint, schedules, sharding, testing,
                                    projections, tree, tree_utils, microbatching],
                         ids=lambda m: m.__name__)
def test_every_public_callable_is_annotated(module):
    missing = {name: _unannotated(getattr(module, name)) for name in module.__all__}
    assert {name: args for name, args in missing.items() if args} == {}


def test_the_check_sees_a_missing_annotation():
    def typed(x: int, *, y: str = "") -> None: ...

    def untyped(x, y: int):
        return x

    class Hand:
        def __init__(self, x: int):
            self.x = x

    assert _unannotated(typed) == []
    assert _unannotated(untyped) == ["x", "return"]
    assert _unannotated(Hand) == ["return"]
    assert _unannotated(gradxform.ScaleByAdamState) == []


def test_mypy_finds_no_error_in_the_package():
    # mypy is in the dev extra; the configuration ([tool.mypy] in pyproject.toml) names the package.
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
