"""Every notebook in notebooks/ runs top to bottom; its assert cells are its claims.

The notebooks are executed with nbclient in a fresh python3 kernel (the interpreter running
the tests), on the CPU, with matplotlib's Agg backend.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = [
    "01_ema_and_bias_correction",
    "02_rosenbrock_tour",
    "03_xor_mlp",
    "04_adam_vs_adamw",
    "05_learning_rate_schedules",
    "06_compose_your_own_optimizer",
    "07_sophia",
    "08_muon",
    "09_schedule_free",
    "10_adafactor_and_8bit_state",
]


def test_the_notebooks_are_all_there():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_clean_and_checks_a_claim(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, (
            f"{path.name}: commit notebooks with outputs stripped"
        )
    assert any(re.search(r"^\s*(assert |np\.testing\.assert)", c.source, re.M) for c in code)


def test_every_notebook_is_listed_in_the_readme():
    readme = (NOTEBOOK_DIR / "README.md").read_text()
    for path in NOTEBOOKS:
        assert f"]({path.name})" in readme, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, monkeypatch):
    # The kernel inherits the environment: CPU only, no display.
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, kernel_name="python3", timeout=300,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert errors == []
