import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/reference.py

SHARED_MODELS = Path(__file__).resolve().parents[1].parent / "shared" / "models"


def shared_model(relpath: str) -> Path:
    """A file of ../shared/models, or a skip (never under CI=true, where a missing file fails)."""
    path = SHARED_MODELS / relpath
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing under CI: ../shared/models must sit beside the checkout")
        pytest.skip(f"{path} not found (../shared/models sits beside the checkout on the team's machines)")
    return path


@pytest.fixture
def llama2_tokenizer_path() -> Path:
    return shared_model("llama2-tokenizer/tokenizer.model")


@pytest.fixture
def stories260k_path() -> Path:
    return shared_model("stories260K/stories260K.bin")


REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, input=None, timeout=300):
    """Run `python -m llama_np ARGS` on this checkout's code; returns CompletedProcess (text)."""
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "llama_np", *map(str, args)], capture_output=True, text=True,
                          input=input, timeout=timeout, env=env, cwd=REPO)


def rendered_lines(stderr: str) -> list[str]:
    """The lines as a terminal shows them: a progress bar that was cleared with \\r leaves nothing."""
    lines = (line.rsplit("\r", 1)[-1].strip() for line in stderr.split("\n"))
    return [line for line in lines if line]


def assert_one_line_error(result, *fragments):
    """Bad input: exit status 2, one line `error: ...` on stderr holding each fragment, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = rendered_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory) -> Path:
    """A random-weight LLaMA (demo.build_demo_model: dim 64, 2 layers, GQA 4/2, the demo's 320-piece tokenizer),
    built once: for tests where any LLaMA will do."""
    from llama_np.demo import build_demo_model

    return build_demo_model(tmp_path_factory.mktemp("random-model") / "model", seed=7)


@pytest.fixture(scope="session")
def handmade_model_dir(tmp_path_factory) -> Path:
    """The hand-written LLaMA of `llama-np demo` (llama_np/handmade.py, the demo tokenizer), built once."""
    from llama_np.demo import build_handmade_model

    return build_handmade_model(tmp_path_factory.mktemp("handmade") / "model")


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray instance for the whole session (starting Ray takes seconds): the tensor-parallel
    tests open their ranks on it. Ray is a test dependency (setup.cfg's test extra includes ray)."""
    try:
        import ray
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("ray is not installed under CI: setup.cfg's test extra must include it")
        pytest.skip('ray is not installed (pip install "llama_np[ray]")')
    from llama_np.parallel.ray_backend import start_local_ray

    start_local_ray()
    yield ray
    ray.shutdown()
