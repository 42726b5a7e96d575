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
