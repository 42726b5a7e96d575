"""The notebooks run top to bottom, on this checkout's llama_np, and draw their figures.

Each is executed by nbclient in a fresh kernel with cwd notebooks/ and the worktree first on
PYTHONPATH (so the kernel imports this checkout, not some other installed llama_np). A cell that
raises fails the test; so does a notebook that shows fewer figures than it calls plt.show().
The notebooks check their own numbers with asserts (by-hand recomputation against the trace,
cached vs full logits, ours vs PyTorch), so running them is also a test of what they teach.

All runs start together (three kernels at a time) in one module fixture: most of a notebook's
time is kernel start-up and imports, which overlap well.
"""
import asyncio
import os
import re
import traceback

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO, SHARED_MODELS

NOTEBOOKS = REPO / "notebooks"
ALL = sorted(p.name for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
USES_A_MODEL = [n for n in ALL if not n.startswith("01_")]        # 01 is about the tokenizer alone
ANY_MODEL = [n for n in USES_A_MODEL if not n.startswith("09_")]  # 09 is about the hand-written model itself
READ_WEIGHTS = [n for n in ANY_MODEL if not n.startswith("04_")]     # 04 reads activations only
STORIES260K = SHARED_MODELS / "stories260K" / "stories260K.bin"
PARALLEL_KERNELS = 3


async def execute(name: str, model_dir, limit: asyncio.Semaphore):
    """Run notebooks/NAME in a fresh kernel with MODEL_DIR unset (the default choice) or as given;
    returns the executed notebook, or the error text."""
    env = {k: v for k, v in os.environ.items() if k != "MODEL_DIR"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    if model_dir is not None:
        env["MODEL_DIR"] = str(model_dir)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}})
    async with limit:
        try:
            await client.async_execute(env=env)
        except Exception as e:                      # CellExecutionError carries the cell's traceback
            text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))      # the kernel's traceback has terminal colours
            return f"{type(e).__name__}: {text[-3000:] or traceback.format_exc()}"
    return nb


@pytest.fixture(scope="module")
def runs(random_model_dir, tmp_path_factory):
    """(notebook, "default" | "stories260K" | "model_dir" | "int8") -> executed notebook or error text."""
    from llama_np.checkpoints.convert import quantize

    own = random_model_dir
    int8 = quantize(own, tmp_path_factory.mktemp("nb-int8") / "int8", progress=False)
    jobs = {(n, "default"): None for n in ALL}
    if STORIES260K.exists():
        jobs.update({(n, "stories260K"): "stories260K" for n in ANY_MODEL})
    jobs[("02_embeddings_and_rmsnorm.ipynb", "model_dir")] = own
    jobs.update({(n, "int8"): int8 for n in READ_WEIGHTS})

    async def run_all():
        limit = asyncio.Semaphore(PARALLEL_KERNELS)
        done = await asyncio.gather(*(execute(n, d, limit) for (n, _), d in jobs.items()))
        return dict(zip(jobs, done))

    results = asyncio.run(run_all())
    results["own_model_dir"], results["int8_model_dir"] = own, int8
    return results


def executed(runs, name, variant):
    result = runs.get((name, variant))
    if result is None:
        pytest.skip(f"no {variant} run (../shared/models is absent)")
    if isinstance(result, str):
        pytest.fail(f"{name} on the {variant} model failed:\n{result}", pytrace=False)
    return result


def figures(nb) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
               for out in cell.get("outputs", []))


def shows(nb) -> int:
    return sum(cell.source.count("plt.show()") for cell in nb.cells if cell.cell_type == "code")


def first_output(nb) -> str:
    """The text the first code cell printed (which model the notebook chose)."""
    cell = next(c for c in nb.cells if c.cell_type == "code")
    return "".join(o.get("text", "") for o in cell.outputs)


def test_all_notebooks_are_there():
    assert [n[:2] for n in ALL] == ["01", "02", "03", "04", "05", "06", "07", "08", "09"], ALL


@pytest.mark.parametrize("name", ALL)
def test_committed_notebook_carries_no_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{name}: clear the outputs before committing"


@pytest.mark.parametrize("name", ALL)
def test_notebook_runs_top_to_bottom_and_draws_every_figure(runs, name):
    """On the default model: the hand-written LLaMA of `llama-np demo` (what a fresh install gets)."""
    nb = executed(runs, name, "default")
    assert shows(nb) >= 1, f"{name} draws no figure"
    assert figures(nb) == shows(nb), f"{name}: {figures(nb)} figures shown, {shows(nb)} plt.show() calls"
    if name in USES_A_MODEL:
        assert "the hand-written LLaMA" in first_output(nb)


@pytest.mark.parametrize("name", ANY_MODEL)
def test_notebook_runs_on_stories260k_too(runs, name):
    """MODEL_DIR=stories260K: a real-format GQA checkpoint without a tokenizer (token ids only)."""
    nb = executed(runs, name, "stories260K")
    assert figures(nb) == shows(nb)
    assert "model: stories260K" in first_output(nb) and "origin is unverified" in first_output(nb)


def test_notebook_runs_on_the_converted_model_named_by_MODEL_DIR(runs):
    nb = executed(runs, "02_embeddings_and_rmsnorm.ipynb", "model_dir")
    assert f"model: {runs['own_model_dir']}" in first_output(nb)
    assert figures(nb) == shows(nb)


@pytest.mark.parametrize("name", READ_WEIGHTS)
def test_notebook_runs_on_an_int8_model_named_by_MODEL_DIR(runs, name):
    """An int8 directory (llama-np quantize) as MODEL_DIR: every notebook runs and draws, unchanged."""
    nb = executed(runs, name, "int8")
    assert f"model: {runs['int8_model_dir']}" in first_output(nb)
    assert figures(nb) == shows(nb)
