"""Our Tokenizer against SentencePiece's own ids with the real LLaMA 2 tokenizer, and Meta's BOS/EOS rules."""
import pytest
import sentencepiece as spm

from llama_np import LlamaNpError, Tokenizer

FRENCH = ("Translate English to French:\n\nsea otter => loutre de mer\npeppermint => menthe poivrée\n"
          "plush giraffe => girafe en peluche\ncheese =>")
PROMPTS = ["I believe the meaning of life is", "Simply put, the theory of relativity states that ",
           "A brief message congratulating the team on the launch:\n\n        Hi everyone,\n\n        I just ",
           FRENCH, "  two leading spaces", "café, naïve, Ελληνικά, 日本語, emoji 😀👍🏽", ""]


@pytest.fixture(scope="module")
def tokenizers(request):
    from conftest import shared_model

    path = shared_model("llama2-tokenizer/tokenizer.model")
    return Tokenizer(path), spm.SentencePieceProcessor(model_file=str(path))


def test_special_ids_are_llama2s(tokenizers):
    tok, _ = tokenizers
    assert (tok.n_words, tok.bos_id, tok.eos_id, tok.pad_id) == (32000, 1, 2, -1)


def test_known_ids_of_hello_world():
    """Ids quoted for LLaMA 2 everywhere: <s>=1, '▁Hello'=15043, '▁world'=3186."""
    from conftest import shared_model

    tok = Tokenizer(shared_model("llama2-tokenizer/tokenizer.model"))
    assert tok.encode("Hello world", bos=True, eos=False) == [1, 15043, 3186]
    assert tok.encode("Hello world", bos=True, eos=True) == [1, 15043, 3186, 2]


@pytest.mark.parametrize("text", PROMPTS)
def test_encode_equals_sentencepiece_with_bos_eos_as_meta(tokenizers, text):
    tok, sp = tokenizers
    ids = sp.encode(text)
    assert tok.encode(text, bos=False, eos=False) == ids
    assert tok.encode(text, bos=True, eos=False) == [1] + ids
    assert tok.encode(text, bos=True, eos=True) == [1] + ids + [2]
    assert tok.encode(text, bos=False, eos=True) == ids + [2]


@pytest.mark.parametrize("text", PROMPTS)
def test_decode_round_trips_and_ignores_bos_eos(tokenizers, text):
    tok, sp = tokenizers
    ids = tok.encode(text, bos=True, eos=True)
    assert tok.decode(ids) == sp.decode(sp.encode(text)) == text


def test_french_translation_prompt_round_trips_exactly(tokenizers):
    tok, sp = tokenizers
    ids = tok.encode(FRENCH, bos=True, eos=False)
    assert ids == [1] + sp.encode(FRENCH)
    assert tok.decode(ids) == FRENCH
    assert ids.count(13) == 5                           # '<0x0A>': the five newlines are byte tokens
    assert sp.id_to_piece(13) == "<0x0A>"


def test_missing_and_corrupt_tokenizer_files_are_refused(tmp_path):
    with pytest.raises(LlamaNpError, match="not found"):
        Tokenizer(tmp_path / "nope.model")
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(LlamaNpError, match="not a SentencePiece model"):
        Tokenizer(bad)
