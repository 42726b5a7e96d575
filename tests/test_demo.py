"""`llama-np demo` runs the hand-written LLaMA with nothing downloaded: it completes the repetition of
its example, continues the user's own text (spelled in bytes where the vocabulary cannot), ends the
text when there is nothing to copy, and refuses an empty prompt or one longer than the context."""
import time

from conftest import assert_one_line_error, run_cli
from llama_np.demo import example


def test_demo_completes_the_repeated_passage_in_seconds_and_says_how():
    prompt, continuation = example()
    assert prompt.count("The cat sat on the") == 2 and continuation == " mat and looked at the little robot."
    t0 = time.perf_counter()
    result = run_cli("demo")
    seconds = time.perf_counter() - t0
    assert result.returncode == 0, result.stderr
    assert result.stdout == prompt + continuation + "\n"
    assert "written by hand" in result.stderr and "induction head" in result.stderr
    assert "Traceback" not in result.stderr
    assert seconds < 60, f"the demo took {seconds:.0f} s"


def test_demo_continues_your_own_prompt_with_byte_fallback():
    """☃ and the accented letters are not in the 320-piece vocabulary: they are spelled as UTF-8 bytes,
    copied byte by byte, and decoded back."""
    prompt = "Ünïcödé ☃ snow and ice. Ünïcödé ☃"
    result = run_cli("demo", "--prompt", prompt, "--max-new-tokens", "9")      # ▁s n o w ▁and ▁i c e .
    assert result.returncode == 0, result.stderr
    assert result.stdout == prompt + " snow and ice.\n"


def test_demo_ends_the_text_when_nothing_in_the_prompt_repeats():
    result = run_cli("demo", "--prompt", "xyz")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "xyz\n" and "end of text" in result.stderr


def test_demo_refuses_an_empty_prompt():
    assert_one_line_error(run_cli("demo", "--prompt", ""), "--prompt is empty")


def test_demo_refuses_a_prompt_longer_than_the_context():
    assert_one_line_error(run_cli("demo", "--prompt", "ab " * 1500), "context is 2048")


def test_python_dash_m_is_the_same_command():
    result = run_cli("--help")
    assert result.returncode == 0 and "convert" in result.stdout and "demo" in result.stdout
