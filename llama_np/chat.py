"""LLaMA 2 chat: the dialog format of Meta's llama/generation.py chat_completion, and chatting.

A dialog is a list of {"role", "content"} messages: an optional "system" message, then "user" and
"assistant" alternating, ending with "user". The ids the chat models were trained on:

    [BOS] [INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user 1} [/INST] {answer 1} [EOS]
    [BOS] [INST] {user 2} [/INST] {answer 2} [EOS]
    ...
    [BOS] [INST] {last user message} [/INST]

Each completed (user, answer) pair is encoded on its own (so each has its own BOS/EOS); the
system message is folded into the first user message; the tags are plain text, not special tokens,
which is why messages containing them are refused.
"""
from __future__ import annotations

from typing import Callable

from .errors import LlamaNpError
from .generation import complete, need_tokenizer, stream_ids
from .sampling import SamplingParams
from .text import collect_text

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
SPECIAL_TAGS = [B_INST, E_INST, "<<SYS>>", "<</SYS>>"]


def check_dialog(dialog) -> None:
    """Roles system?/user/assistant/user/.../user, string contents, no special tags (LlamaNpError)."""
    if not isinstance(dialog, (list, tuple)) or not dialog:
        raise LlamaNpError("a dialog is a non-empty list of {'role': ..., 'content': ...} messages")
    for i, msg in enumerate(dialog):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or not isinstance(msg.get("content"), str):
            raise LlamaNpError(f"dialog message {i} must be a dict with string 'role' and 'content', got {msg!r}")
        tag = next((t for t in SPECIAL_TAGS if t in msg["content"]), None)
        if tag is not None:
            raise LlamaNpError(f"dialog message {i} contains the special tag {tag!r}, which is not allowed")
    roles = [m["role"] for m in dialog]
    turns = roles[1:] if roles[0] == "system" else roles
    expected = ["user" if i % 2 == 0 else "assistant" for i in range(len(turns))]
    if turns != expected or not turns or turns[-1] != "user":
        raise LlamaNpError(f"dialog roles must be an optional 'system', then 'user' and 'assistant' alternating, "
                           f"ending with 'user'; got {roles}")


def fold_system(dialog: list[dict]) -> list[dict]:
    """Meta's rule: a leading system message becomes part of the first user message."""
    if dialog[0]["role"] != "system":
        return list(dialog)
    first = {"role": dialog[1]["role"], "content": B_SYS + dialog[0]["content"] + E_SYS + dialog[1]["content"]}
    return [first] + list(dialog[2:])


def encode_dialog(tokenizer, dialog: list[dict]) -> list[int]:
    """The LLaMA 2 chat prompt ids of a dialog (see the module docstring)."""
    check_dialog(dialog)
    dialog = fold_system(dialog)
    ids: list[int] = []
    for prompt, answer in zip(dialog[:-1:2], dialog[1::2]):
        ids += tokenizer.encode(f"{B_INST} {prompt['content'].strip()} {E_INST} {answer['content'].strip()} ",
                                bos=True, eos=True)
    ids += tokenizer.encode(f"{B_INST} {dialog[-1]['content'].strip()} {E_INST}", bos=True, eos=False)
    return ids


def fit_dialog(tokenizer, dialog: list[dict], max_prompt_tokens: int) -> tuple[list[dict], int]:
    """Drop the oldest (user, assistant) turns, keeping a system message, until the dialog's ids fit
    in max_prompt_tokens -> (the dialog that fits, how many turns were dropped)."""
    check_dialog(dialog)
    system = [dialog[0]] if dialog[0]["role"] == "system" else []
    turns = list(dialog[len(system):])
    dropped = 0
    while len(encode_dialog(tokenizer, system + turns)) > max_prompt_tokens:
        if len(turns) == 1:
            raise LlamaNpError(f"the last message alone is {len(encode_dialog(tokenizer, system + turns))} tokens "
                               f"(with the system prompt); at most {max_prompt_tokens} fit")
        turns, dropped = turns[2:], dropped + 1
    return system + turns, dropped


def chat_completion(model, dialogs: list[list[dict]], *, logprobs: bool = False, stop: list[str] | None = None,
                    **sampling) -> list[dict]:
    """Meta's chat_completion: [{"generation": {"role": "assistant", "content": ...}, ...}] per dialog,
    all dialogs generated as one batch. `sampling`: the fields of SamplingParams."""
    tok = need_tokenizer(model)
    params = SamplingParams(**sampling)
    results = complete(model, [encode_dialog(tok, d) for d in dialogs], params, logprobs, False, stop)
    for result in results:
        result["generation"] = {"role": "assistant", "content": result["generation"]}
    return results


def chat(model, dialog: list[dict], *, stop: list[str] | None = None, on_text: Callable[[str], None] | None = None,
         stats=None, **sampling) -> dict:
    """The assistant's answer to one dialog, streamed to on_text as it is produced
    -> {"role": "assistant", "content": text} (the text is decode(new ids), as Meta's)."""
    ids = encode_dialog(need_tokenizer(model), dialog)
    pieces = stream_ids(model, ids, SamplingParams(**sampling), stop, continuation=False, stats=stats)
    return {"role": "assistant", "content": collect_text(pieces, on_text)}
