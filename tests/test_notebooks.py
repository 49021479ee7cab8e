"""The notebooks under notebooks/: each one runs top to bottom without an error.

Every `notebooks/*.ipynb` is executed with nbclient on a fresh kernel of this interpreter
(the virtualenv's, which has modelyard), in a temporary working directory, against the
local protocol server the notebook starts itself.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from traitlets import default

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))

#: Seconds one cell may run before the notebook fails.
CELL_TIMEOUT = 60

#: Text each notebook's outputs must contain (beyond running without an error).
EXPECTED_TEXT: dict[str, list[str]] = {
    "quickstart": ["reasoner", "coder", "classified", "selected"],
    "custom_graph": [
        "classify -> select_planner -> plan -> select_coder -> implement",
        "classify -> select_answerer -> answer",
        "__error_handler__implement -> select_coder -> implement",
    ],
    "routing_stats": ["completed 60 of 60", "server_error"],
}

#: Notebooks that must draw at least one plot.
EXPECTED_PLOTS = {"routing_stats"}

pytestmark = pytest.mark.timeout(180)


class ThisPythonKernelManager(AsyncKernelManager):
    """Start ipykernel on this interpreter, whatever `python3` kernelspecs are installed.

    A `python3` kernelspec in the user's or the system's Jupyter folders could name another
    Python, one without modelyard; with no folders to search, jupyter_client falls back to
    ipykernel's own spec, whose command is `sys.executable -m ipykernel_launcher`.
    """

    @default("kernel_spec_manager")
    def _kernel_spec_manager_default(self) -> KernelSpecManager:
        return KernelSpecManager(kernel_dirs=[])


def outputs(nb: nbformat.NotebookNode) -> list[dict[str, Any]]:
    """Return every output of every code cell, in order."""
    return [output for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs]


def output_text(nb: nbformat.NotebookNode) -> str:
    """Return the text of every stream and plain-text result, joined."""
    parts = []
    for output in outputs(nb):
        if output["output_type"] == "stream":
            parts.append(output["text"])
        elif "data" in output:
            parts.append(output["data"].get("text/plain", ""))
    return "\n".join(parts)


def stream_text(nb: nbformat.NotebookNode, name: str) -> list[str]:
    """Return what the notebook's cells wrote to one stream (`stdout` or `stderr`)."""
    return [o["text"] for o in outputs(nb) if o["output_type"] == "stream" and o["name"] == name]


def files_under(folder: Path) -> set[Path]:
    """Return every file and folder under `folder` (none when it does not exist)."""
    return set(folder.rglob("*")) if folder.exists() else set()


def test_notebooks_are_found() -> None:
    assert PATHS, f"no notebooks under {NOTEBOOKS}"


@pytest.mark.parametrize("path", PATHS, ids=[path.stem for path in PATHS])
def test_notebook_is_saved_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    ran = [cell.source[:60] for cell in nb.cells if cell.cell_type == "code" and cell.outputs]
    assert not ran, f"{path.name} is saved with outputs; clear them before committing: {ran}"
    counted = [cell.execution_count for cell in nb.cells if cell.cell_type == "code"]
    assert set(counted) <= {None}, f"{path.name} is saved with execution counts"


@pytest.mark.parametrize("path", PATHS, ids=[path.stem for path in PATHS])
def test_notebook_runs(path: Path, tmp_path: Path) -> None:
    before = files_under(NOTEBOOKS) | files_under(ROOT / ".modelyard")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        kernel_manager_class=ThisPythonKernelManager,
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's working directory
    )
    client.execute()  # raises CellExecutionError, naming the cell, on the first error

    errors = [output for output in outputs(nb) if output["output_type"] == "error"]
    assert not errors, errors
    stderr = stream_text(nb, "stderr")
    assert not stderr, f"{path.name} wrote to stderr: {stderr}"

    text = output_text(nb)
    missing = [expected for expected in EXPECTED_TEXT.get(path.stem, []) if expected not in text]
    assert not missing, f"{path.name}'s outputs lack {missing}"
    if path.stem in EXPECTED_PLOTS:
        plots = [o for o in outputs(nb) if "image/png" in o.get("data", {})]
        assert plots, f"{path.name} drew no plot"

    left = sorted(p.name for p in tmp_path.iterdir())
    assert not left, f"{path.name} left files in its working directory: {left}"
    after = files_under(NOTEBOOKS) | files_under(ROOT / ".modelyard")
    assert after == before, f"{path.name} left files in the repository: {sorted(after - before)}"


def test_kernel_is_this_python(tmp_path: Path) -> None:
    """The notebooks' kernel runs on this interpreter, the one modelyard is installed in."""
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("import sys, modelyard.graphs\nprint(sys.executable)")]
    )
    NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        kernel_manager_class=ThisPythonKernelManager,
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    assert output_text(nb).strip() == sys.executable
