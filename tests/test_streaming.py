"""Streaming text: increments that add up to exactly what SentencePiece decodes, and stop sequences."""
import numpy as np
import pytest
import sentencepiece as spm

import llama_np
from conftest import run_cli, shared_model
from llama_np import Tokenizer
from llama_np.generation import stream
from llama_np.text import StopText, TextStream

TEXTS = ["Hello world", " leading space", "   three leading spaces and trailing  ", "café crème brûlée, naïve Zoë",
         "emoji 😀 and a family 👨‍👩‍👧 and a thumbs up 👍🏽!", "日本語のテキスト、中文文本，한국어 텍스트",
         "line one\nline two\n\n  indented\ttab", "mixed: Ελληνικά — “quotes” … ½ € ∑ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\n\nstarts with newlines"]


@pytest.fixture(scope="module")
def llama_tok():
    return Tokenizer(shared_model("llama2-tokenizer/tokenizer.model"))


def streamed(tok, ids, context=()):
    s = TextStream(tok, context)
    pieces = [s.push(t) for t in ids] + [s.flush()]
    return [p for p in pieces if p]


@pytest.mark.parametrize("text", TEXTS)
def test_stream_adds_up_to_decode_of_all_ids_and_never_breaks_a_character(llama_tok, text):
    sp = spm.SentencePieceProcessor(model_file=str(llama_tok.path))
    ids = sp.encode(text)
    pieces = streamed(llama_tok, ids)
    assert "".join(pieces) == sp.decode(ids)
    assert not any("\ufffd" in p for p in pieces)
    assert any(sp.id_to_piece(i).startswith("<0x") for i in sp.encode(TEXTS[4]))   # byte fallback really used


@pytest.mark.parametrize("text", TEXTS)
def test_prompt_plus_stream_equals_decode_of_prompt_and_new_ids(llama_tok, text):
    sp = spm.SentencePieceProcessor(model_file=str(llama_tok.path))
    for prompt in ["Once upon a time", "Réponse :", "😀", "a\n"]:
        context, new = [1] + sp.encode(prompt), sp.encode(text)
        pieces = streamed(llama_tok, new, context)
        assert sp.decode(context) + "".join(pieces) == sp.decode(context + new)


def test_stream_splits_anywhere_inside_a_text(llama_tok):
    """Every cut of an encoded text (prompt | generated) whose prompt part is whole characters."""
    sp = spm.SentencePieceProcessor(model_file=str(llama_tok.path))
    ids = [1] + sp.encode(" ".join(TEXTS))
    for k in range(1, len(ids)):
        if not sp.decode(ids[:k]).endswith("\ufffd"):
            assert sp.decode(ids[:k]) + "".join(streamed(llama_tok, ids[k:], ids[:k])) == sp.decode(ids), k


def test_random_ids_with_broken_bytes_still_add_up(llama_tok):
    """Random ids, a third of them byte tokens (invalid UTF-8 decodes to U+FFFD, as in decode)."""
    sp = spm.SentencePieceProcessor(model_file=str(llama_tok.path))
    rng = np.random.default_rng(0)
    for _ in range(200):
        ids = np.where(rng.random(20) < 0.35, rng.integers(3, 259, 20), rng.integers(259, 32000, 20)).tolist()
        assert "".join(streamed(llama_tok, ids)) == sp.decode(ids)
        assert sp.decode([1, 450]) + "".join(streamed(llama_tok, ids, [1, 450])) == sp.decode([1, 450] + ids)


def test_stream_of_a_tokenizer_that_strips_all_leading_spaces(tmp_path):
    """The demo tokenizer (trained with SentencePiece's defaults) drops every leading space at the
    start of a decode: windows are decoded after an anchor piece, so inner spaces survive."""
    from llama_np.demo import train_demo_tokenizer

    train_demo_tokenizer(tmp_path / "t.model")
    tok = Tokenizer(tmp_path / "t.model")
    space = tok.sp.piece_to_id("▁")
    ids = tok.encode("the sea", bos=False) + [space, space] + tok.encode("and sky 😀", bos=False)
    assert tok.decode(ids).count("  ") >= 1
    assert "".join(streamed(tok, ids)) == tok.decode(ids)
    context = tok.encode("Once", bos=True)
    assert tok.decode(context) + "".join(streamed(tok, ids, context)) == tok.decode(context + ids)


# ---- stop sequences


def run_stop(stop, pieces):
    s, out = StopText(stop), []
    for p in pieces:
        text, stopped = s.push(p)
        out.append(text)
        if stopped:
            return "".join(out), True
    return "".join(out) + s.flush(), False


def test_stop_text_spanning_increments_is_never_emitted():
    assert run_stop(["\n\nUser:"], ["Hi", " there", "\n", "\nUs", "er", ":", " more"]) == ("Hi there", True)
    assert run_stop(["END"], list("abcENDdef")) == ("abc", True)


def test_held_back_prefix_is_released_when_it_is_not_a_stop():
    s = StopText(["\n\n"])
    assert s.push("a\n") == ("a", False)                     # "\n" might begin the stop: held
    assert s.push("b") == ("\nb", False)
    assert run_stop(["\n\n", "###"], ["x\n", "#", "#y"]) == ("x\n##y", False)


def test_earliest_of_several_stops_wins():
    assert run_stop(["at", "cat"], ["the c", "at sat"]) == ("the ", True)     # "cat" begins first
    assert run_stop(["sat", "t s"], ["the c", "at sat"]) == ("the ca", True)


# ---- end to end with a model


def test_stream_from_the_model_continues_the_prompt(random_model_dir):
    model = llama_np.load(random_model_dir)
    prompt = "Once upon a time"
    ids = model.tokenizer.encode(prompt, bos=True)
    new = model.generate(ids, max_new_tokens=30, temperature=0.0)
    pieces = list(stream(model, prompt, max_new_tokens=30, temperature=0.0))
    assert model.tokenizer.decode(ids) + "".join(pieces) == model.tokenizer.decode(ids + new)
    assert "".join(stream(model, prompt, max_new_tokens=30, temperature=0.0, continuation=False)) == model.tokenizer.decode(new)
    assert model.generate(prompt, max_new_tokens=30, temperature=0.0) == "".join(pieces)


def test_stream_from_the_model_ends_before_the_stop_text(random_model_dir):
    model = llama_np.load(random_model_dir)
    full = "".join(stream(model, "the sea", max_new_tokens=30, temperature=0.0))
    stop = full[8:11]
    assert "".join(stream(model, "the sea", max_new_tokens=30, temperature=0.0, stop=[stop])) == full[:full.find(stop)]
    r = run_cli("generate", random_model_dir, "--prompt", "the sea", "--temperature", "0", "--max-new-tokens", "30",
                "--stop", stop, "--echo")
    assert r.returncode == 0, r.stderr
    assert r.stdout == (model.tokenizer.decode(model.tokenizer.encode("the sea")) + full[:full.find(stop)] + "\n"
                        ).replace("\r", "\n")


def test_cli_stop_option_reads_backslash_escapes():
    from llama_np.cli import _unescape

    assert _unescape(r"\nQ:") == "\nQ:" and _unescape(r"a\tb") == "a\tb" and _unescape(r"\\n") == "\\n"
    assert _unescape("plain é") == "plain é"
