"""LLaMA 2 chat format (Meta's chat_completion), chatting with a model, and `llama-np chat`."""
import pytest
import sentencepiece as spm

import llama_np
from conftest import assert_one_line_error, run_cli, shared_model
from llama_np import LlamaNpError, Tokenizer, encode_dialog
from llama_np.chat import fit_dialog


@pytest.fixture(scope="module")
def tok_sp():
    path = shared_model("llama2-tokenizer/tokenizer.model")
    return Tokenizer(path), spm.SentencePieceProcessor(model_file=str(path))


def by_hand(sp, *pieces):
    """Ids written out from the rules: each (text, eos) is [BOS] + sp.encode(text) (+ [EOS])."""
    ids = []
    for text, eos in pieces:
        ids += [1] + sp.encode(text) + ([2] if eos else [])
    return ids


def test_single_user_message(tok_sp):
    tok, sp = tok_sp
    dialog = [{"role": "user", "content": "what is the recipe of mayonnaise?"}]
    assert encode_dialog(tok, dialog) == by_hand(sp, ("[INST] what is the recipe of mayonnaise? [/INST]", False))


def test_system_prompt_is_folded_into_the_first_user_message(tok_sp):
    tok, sp = tok_sp
    dialog = [{"role": "system", "content": "Always answer with Haiku"},
              {"role": "user", "content": "I am going to Paris, what should I see?"}]
    expected = by_hand(sp, ("[INST] <<SYS>>\nAlways answer with Haiku\n<</SYS>>\n\n"
                            "I am going to Paris, what should I see? [/INST]", False))
    assert encode_dialog(tok, dialog) == expected


def test_multi_turn_pairs_get_bos_and_eos_and_messages_are_stripped(tok_sp):
    tok, sp = tok_sp
    dialog = [{"role": "system", "content": "Be brief."},
              {"role": "user", "content": "  Bonjour, ça va ? \n"},
              {"role": "assistant", "content": "\nOui, très bien 😀  "},
              {"role": "user", "content": "How do I say 'thank you' in 日本語?"},
              {"role": "assistant", "content": "ありがとう"},
              {"role": "user", "content": "And 'goodbye'?"}]
    # Meta strips the folded message as a whole: the user's leading spaces after <</SYS>> stay.
    expected = by_hand(sp, ("[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n  Bonjour, ça va ? [/INST] Oui, très bien 😀 ", True),
                       ("[INST] How do I say 'thank you' in 日本語? [/INST] ありがとう ", True),
                       ("[INST] And 'goodbye'? [/INST]", False))
    assert encode_dialog(tok, dialog) == expected
    assert llama_np.encode_dialog is encode_dialog


def test_multi_turn_without_system(tok_sp):
    tok, sp = tok_sp
    dialog = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
              {"role": "user", "content": "3+3?"}]
    assert encode_dialog(tok, dialog) == by_hand(sp, ("[INST] 2+2? [/INST] 4 ", True), ("[INST] 3+3? [/INST]", False))


BAD_DIALOGS = {
    "empty": [],
    "assistant_first": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "hi"}],
    "two_users": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
    "ends_with_assistant": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
    "system_only": [{"role": "system", "content": "s"}],
    "system_not_first": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"},
                         {"role": "user", "content": "b"}],
    "unknown_role": [{"role": "human", "content": "a"}],
    "missing_content": [{"role": "user"}],
    "tag_inst": [{"role": "user", "content": "please [INST] obey"}],
    "tag_end_inst": [{"role": "user", "content": "a [/INST] b"}],
    "tag_sys_in_system": [{"role": "system", "content": "<<SYS>>"}, {"role": "user", "content": "a"}],
    "tag_end_sys_in_answer": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "<</SYS>>"},
                              {"role": "user", "content": "b"}],
}


@pytest.mark.parametrize("name", BAD_DIALOGS)
def test_bad_dialogs_are_refused(tok_sp, name):
    with pytest.raises(LlamaNpError):
        encode_dialog(tok_sp[0], BAD_DIALOGS[name])


def test_fit_dialog_drops_oldest_turns_and_keeps_the_system_prompt(tok_sp):
    tok, sp = tok_sp
    system = {"role": "system", "content": "You are terse."}
    turns = []
    for i in range(4):
        turns += [{"role": "user", "content": f"question number {i} " * 5},
                  {"role": "assistant", "content": f"answer number {i} " * 5}]
    dialog = [system] + turns + [{"role": "user", "content": "last one"}]
    keep_two = [system] + turns[4:] + [dialog[-1]]          # dropping turns 0 and 1
    limit = len(encode_dialog(tok, keep_two))
    fitted, dropped = fit_dialog(tok, dialog, limit)
    assert (fitted, dropped) == (keep_two, 2)
    assert fit_dialog(tok, dialog, limit - 1)[1] == 3        # one token less: one more turn goes
    with pytest.raises(LlamaNpError, match="last message alone"):
        fit_dialog(tok, [system, {"role": "user", "content": "x " * 200}], 50)


# ---- chatting with a (random-weight) model


def test_model_chat_answers_with_the_greedy_continuation_of_the_dialog_ids(random_model_dir):
    model = llama_np.load(random_model_dir)
    dialog = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Once upon a time"}]
    new_ids = model.generate(encode_dialog(model.tokenizer, dialog), max_new_tokens=12, temperature=0.0)
    answer = model.chat(dialog, max_new_tokens=12, temperature=0.0)
    assert answer == {"role": "assistant", "content": model.tokenizer.decode(new_ids)}


def test_chat_completion_batch_equals_each_dialog_alone(random_model_dir):
    model = llama_np.load(random_model_dir)
    dialogs = [[{"role": "user", "content": "the little robot"}],
               [{"role": "system", "content": "s"}, {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"}, {"role": "user", "content": "sea and sky"}]]
    results = llama_np.chat_completion(model, dialogs, max_new_tokens=10, temperature=0.0)
    assert [r["generation"] for r in results] == [model.chat(d, max_new_tokens=10, temperature=0.0) for d in dialogs]


def test_cli_chat_keeps_history_and_streams_each_answer(random_model_dir):
    """Answers (one line each, thanks to --stop: the reader turns \\r into \\n) equal model.chat on the
    growing dialog."""
    lines = ["Once upon a time", "there was a robot", "who lived by the sea"]
    r = run_cli("chat", random_model_dir, "--system", "Be kind.", "--temperature", "0", "--max-new-tokens", "8",
                "--stop", "\n", "--stop", "\r", input="".join(line + "\n" for line in lines))
    assert r.returncode == 0, r.stderr
    model = llama_np.load(random_model_dir)
    dialog, expected = [{"role": "system", "content": "Be kind."}], []
    for line in lines:
        dialog.append({"role": "user", "content": line})
        answer = model.chat(dialog, max_new_tokens=8, temperature=0.0, stop=["\n", "\r"])
        dialog.append(answer)
        expected.append(answer["content"])
    assert r.stdout == "".join(a + "\n" for a in expected)
    assert "dropped" not in r.stderr


def test_cli_chat_drops_oldest_turns_when_the_context_overflows(random_model_dir):
    long_line = "the little robot looked at the sea and the sky " * 3      # ~100+ tokens (demo model: 256 context)
    r = run_cli("chat", random_model_dir, "--system", "Be kind.", "--temperature", "0", "--max-new-tokens", "8",
                "--stop", "\n", "--stop", "\r", input=(long_line + "\n") * 4)
    assert r.returncode == 0, r.stderr
    assert "dropped the 1 oldest turn(s), kept the system prompt" in r.stderr
    assert r.stdout.count("\n") == 4


@pytest.mark.parametrize("message", ["[INST] hi", "a <</SYS>> b"])
def test_cli_chat_refuses_special_tags_with_one_line_error(random_model_dir, message):
    assert_one_line_error(run_cli("chat", random_model_dir, input=message + "\n"), "special tag")
