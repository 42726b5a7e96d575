"""`llama-np demo` works with nothing downloaded and says plainly that its weights are random."""
from conftest import run_cli


def test_demo_generates_and_says_the_weights_are_random():
    result = run_cli("demo", "--max-new-tokens", "8")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Once upon a time")
    assert "RANDOM weights" in result.stderr and "llama-np convert" in result.stderr
    assert "Traceback" not in result.stderr


def test_python_dash_m_is_the_same_command():
    result = run_cli("--help")
    assert result.returncode == 0 and "convert" in result.stdout and "demo" in result.stdout
