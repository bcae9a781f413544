"""Every notebook runs top to bottom, headless, in smoke mode, in both of its paths; a cell that errors fails.

Notebooks are stored as jupytext "percent" scripts (notebooks/*.py): they diff like code, a code
host shows them as readable Python, and `jupytext --to ipynb` (or opening them in Jupyter with the
jupytext extension) gives the notebook. Smoke mode (NANOINSTRUCT_SMOKE=1) shrinks what they train.

The two paths: with a run folder (NANOINSTRUCT_RUN pointing at one quick run of the whole pipeline,
RLAIF included, made once per test session) the notebooks read it; without one (NANOINSTRUCT_RUN
pointing nowhere) each makes its own quick run. Either way a notebook must draw its plots (counted as
image/png outputs), each with both axis labels and a title, must not print the pipeline's progress
lines, and must not write into the run folder it reads.
"""
import glob
import json
import os
import re
import sys

import pytest

import jupytext  # the notebooks extra: pip install -e ".[dev,notebooks]"
import nbclient
import nbformat

import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "[0-9]*.py")))
# the plots each notebook draws from a quick run, in either path (an image/png output each); 07's
# judge-per-family plot needs pairs the gold rule can rank, which the quick models never answer well enough
PLOTS = {"01_tour.py": 1, "02_gpt_and_tokenizer.py": 1, "03_sft_and_masking.py": 2, "04_reward_model.py": 1,
         "05_ppo.py": 2, "06_dpo.py": 2, "07_rlaif.py": 1}


def reads_a_run(path):
    return "NANOINSTRUCT_RUN\"" in open(path).read()


CASES = [(path, mode) for path in NOTEBOOKS for mode in (("run", "no_run") if reads_a_run(path) else ("no_run",))]

# Run first in the kernel: every figure that is rendered (pyplot's inline display, or Figure.savefig)
# is checked for an x label, a y label and a title on each of its axes; the last cell reports.
CHECK_LABELS = """
import matplotlib.backend_bases as _backend_bases
_unlabelled, _print_figure = [], _backend_bases.FigureCanvasBase.print_figure
def _print_labelled_figure(self, *args, **kwargs):
    suptitle = self.figure._suptitle.get_text() if self.figure._suptitle else ""
    for ax in self.figure.axes:
        title = suptitle or any(ax.get_title(loc) for loc in ("center", "left", "right"))
        if not (ax.get_xlabel() and ax.get_ylabel() and title):
            _unlabelled.append((ax.get_title() or "untitled", ax.get_xlabel(), ax.get_ylabel()))
    return _print_figure(self, *args, **kwargs)
_backend_bases.FigureCanvasBase.print_figure = _print_labelled_figure
"""
REPORT_LABELS = "assert not _unlabelled, f'plots without an x label, a y label or a title: {_unlabelled}'"


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 1
    assert set(PLOTS) == {os.path.basename(p) for p in NOTEBOOKS}


def test_no_notebook_or_module_switches_the_matplotlib_backend():
    """matplotlib.use (or pyplot.switch_backend) in a notebook, or in code a notebook calls, would
    turn the inline plots of every later cell into nothing."""
    sources = NOTEBOOKS + glob.glob(os.path.join(ROOT, "*.py"))
    for path in sources:
        text = open(path).read()
        assert not re.search(r"matplotlib\.use\(|\.use\(['\"]Agg|switch_backend\(", text), path


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    """One quick run of every stage, RLAIF included: the run folder the notebooks read."""
    runs = tmp_path_factory.mktemp("runs")
    pipeline.main(pipeline.PipelineConfig(name="default", quick=True, rlaif=True, runs_dir=str(runs)))
    return str(runs / "default")


@pytest.fixture
def run_folder(request, tmp_path):
    """The folder NANOINSTRUCT_RUN names: the session's quick run, or (mode no_run) a folder that does not exist."""
    if request.node.callspec.params["mode"] == "run":
        return request.getfixturevalue("quick_run")
    return str(tmp_path / "no_run_here")


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


def snapshot(folder):
    return {os.path.relpath(os.path.join(d, f), folder): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, files in os.walk(folder) for f in files}


@pytest.mark.parametrize("path,mode", CASES, ids=[f"{os.path.basename(p)}-{m}" for p, m in CASES])
def test_notebook_runs(path, mode, run_folder, monkeypatch, tmp_path):
    run = run_folder
    monkeypatch.setenv("NANOINSTRUCT_SMOKE", "1")
    monkeypatch.setenv("NANOINSTRUCT_RUN", run)
    monkeypatch.setenv("NANOINSTRUCT_RUNS", str(tmp_path))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's own inline backend, as in Jupyter
    kernel = use_this_python_as_kernel(monkeypatch, tmp_path / "jupyter")
    notebook = jupytext.read(path)
    notebook.cells.insert(0, nbformat.v4.new_code_cell(CHECK_LABELS))
    notebook.cells.append(nbformat.v4.new_code_cell(REPORT_LABELS))
    before = snapshot(run) if mode == "run" else None
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name=kernel,
                                     resources={"metadata": {"path": ROOT}})
    client.execute()  # raises CellExecutionError, with the cell and the traceback, when a cell fails

    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    name = os.path.basename(path)
    assert images >= PLOTS[name], f"{name} ({mode}): {images} plots shown, expected {PLOTS[name]}"
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "== stage" not in text, "the pipeline's progress lines belong in its log file, not in the notebook"
    if reads_a_run(path):
        if mode == "run":
            assert f"reading the run {run}" in text
            assert snapshot(run) == before, "the notebook wrote into the run folder it reads"
        else:
            assert "a quick run of tiny models instead" in text and "pipeline.log" in text
