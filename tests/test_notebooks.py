"""Every notebook runs top to bottom, headless, in smoke mode; a cell that errors fails the test.

Notebooks are stored as jupytext "percent" scripts (notebooks/*.py): they diff like code, a code
host shows them as readable Python, and `jupytext --to ipynb` (or opening them in Jupyter with the
jupytext extension) gives the notebook. Smoke mode (NANOINSTRUCT_SMOKE=1) shrinks what they train.
"""
import glob
import json
import os
import sys

import pytest

import jupytext  # the notebooks extra: pip install -e ".[dev,notebooks]"
import nbclient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "[0-9]*.py")))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 1


def use_this_python_as_kernel(monkeypatch, directory):
    """A kernelspec running this interpreter, found first (JUPYTER_PATH comes before the user's
    kernels): a stale user-level "python3" kernel, pointing at a deleted venv, cannot break the run."""
    spec_dir = directory / "kernels" / "nanoinstruct-test"
    spec_dir.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "nanoinstruct tests",
                                                       "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(directory))
    return "nanoinstruct-test"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch, tmp_path):
    monkeypatch.setenv("NANOINSTRUCT_SMOKE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("NANOINSTRUCT_RUNS", str(tmp_path))
    kernel = use_this_python_as_kernel(monkeypatch, tmp_path / "jupyter")
    notebook = jupytext.read(path)
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name=kernel,
                                     resources={"metadata": {"path": ROOT}})
    client.execute()  # raises CellExecutionError, with the cell and the traceback, when a cell fails
