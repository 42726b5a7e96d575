"""The `llama-np` command (also `python -m llama_np`).

Bad input ends with one line `error: ...` on stderr and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import itertools
import re
import sys
import time
from pathlib import Path

from .chat import chat, fit_dialog
from .checkpoints.convert import FORMATS, convert, quantize
from .compare import main as compare_main
from .demo import run_demo
from .errors import LlamaNpError
from .weights import WEIGHT_TYPES
from .generation import GenerationStats, complete, need_tokenizer, prompt_ids, stream_ids
from .model import load
from .parallel import open_tensor_parallel
from .perplexity import check_window, perplexity_result
from .sampling import SamplingParams
from .text import check_stop
from .verify import verify


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse would print the usage first)
        raise LlamaNpError(f"{self.prog}: {message} (see --help)")


def _add_convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="the checkpoint: a Meta directory (params.json, consolidated.NN.pth), a Hugging "
                               "Face directory (config.json, *.safetensors or pytorch_model*.bin), or a "
                               "llama2.c file (.bin export or training .pt)")
    p.add_argument("out_dir", help="the converted model directory to create (must not exist, or be empty)")
    p.add_argument("--tokenizer", help="tokenizer.model to copy in (default: the one beside the checkpoint; "
                                       "llama2.c models have none: without one they run on token ids only)")
    p.add_argument("--format", default="auto", choices=FORMATS, help="checkpoint format (default: auto)")
    p.add_argument("--max-seq-len", type=int, default=None,
                   help="context length to record (default: the source's, else 4096 as LLaMA 2)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip checking a Meta download against its checklist.chk (md5 of every file)")
    p.add_argument("--dtype", default="float16", choices=WEIGHT_TYPES,
                   help="how to store the weight matrices: float16 (default), or int8 with one float32 scale per "
                        "row (half the size; `llama-np quantize` does the same from a converted directory)")
    p.add_argument("--tensor-parallel", type=int, default=None, metavar="N",
                   help="write N rank directories OUT_DIR/rank-KK-of-NN, split as Meta's model-parallel shards "
                        "(a Meta download with N shards keeps each shard as its rank); SRC may also be a converted "
                        "directory (float16 or int8)")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    """The fields of SamplingParams, with its defaults (stated once, in sampling.py)."""
    d = SamplingParams()
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens,
                   help="at most this many new tokens (default: until EOS or the end of the context)")
    p.add_argument("--temperature", type=float, default=d.temperature, help=f"0 = greedy (default {d.temperature})")
    p.add_argument("--top-p", type=float, default=d.top_p, help=f"nucleus sampling mass in (0, 1] (default {d.top_p})")
    p.add_argument("--top-k", type=int, default=d.top_k, help="keep only the k most likely tokens (default 0 = off)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed for reproducible sampling")
    p.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="end the answer before this text (repeatable); the stop text is never printed; "
                        "\\n, \\t and \\\\ are read as newline, tab and backslash")


def _sampling(a) -> SamplingParams:
    """The sampling options as one SamplingParams (checked here, before any model is opened)."""
    try:
        return SamplingParams(max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_p=a.top_p,
                              top_k=a.top_k, seed=a.seed)
    except LlamaNpError as e:                    # "top_p must be ..." -> "--top-p must be ..."
        field, rest = str(e).split(" ", 1)
        raise LlamaNpError(f"--{field.replace('_', '-')} {rest}") from None


MAIN_EPILOG = """generate and chat take --max-new-tokens --temperature --top-p --top-k --seed --stop;
generate also --logprobs --echo (and several --prompt as one batch); perplexity --context --stride.
See `llama-np COMMAND --help`."""

GENERATE_EPILOG = """examples:
  llama-np generate llama-2-7b-np --prompt "The capital of France is" --temperature 0
  llama-np generate llama-2-7b-np --prompt "Q: why is the sky blue? A:" --stop "\\nQ:" --seed 1
  llama-np generate llama-2-7b-np --prompt "I believe" --prompt "Simply put," --max-new-tokens 32
  llama-np generate llama-2-7b-np --prompt "Hello" --temperature 0 --logprobs --echo
Several --prompt options are generated together as one batch (Meta's text_completion).
Without --echo only the new text is printed; with --echo the prompt comes first.
--logprobs prints, after the text, each token's log-probability (natural log) under the model."""

CHAT_EPILOG = """Type a message and press Enter; the answer streams back. Ctrl-D (end of input) quits.
Messages can also be piped in, one per line:
  printf 'Hi!\\nTell me a joke.\\n' | llama-np chat llama-2-7b-chat-np --system "Answer briefly."
When the conversation outgrows the context, the oldest turns are dropped (the system prompt is
kept) and a note says so on stderr."""

DEMO_EPILOG = """The model's weights are written by formula, not trained (llama_np/handmade.py): it continues
text it has already seen in the prompt, and ends the text when nothing earlier matches. Try:
  llama-np demo --prompt "My name is Bob and I like cats. My name is"
Greedy decoding; text the 320-piece vocabulary cannot spell is encoded byte by byte."""

PERPLEXITY_EPILOG = """example:
  llama-np perplexity llama-2-7b-np wiki.test.raw --context 1024 --stride 512
Each token is scored once, with up to CONTEXT-1 tokens before it (sliding windows, as in
Hugging Face's perplexity guide); perplexity = exp(mean negative log-likelihood)."""


QUANTIZE_EPILOG = """example:
  llama-np quantize llama-2-7b-np llama-2-7b-int8     (13.5 GB -> 6.7 GB)
Each weight matrix becomes int8 with one float32 scale per row: scale = max|row| / 127,
q = round(w / scale) (llama2.c runq, llama.cpp Q8_0 with one group per row). Norm weights stay.
Every command takes the int8 directory as it takes a float16 one."""


def _add_precision_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fp32-weights", default="auto", choices=["auto", "on", "off"],
                   help="compute with float32 copies of the float16 weight matrices: on, off (widen float16 "
                        "blocks inside each product, no extra RAM), or auto = on when the copies fit in half "
                        "of the available RAM (default)")


def _add_parallel_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tensor-parallel", type=int, default=None, metavar="N",
                   help="run MODEL_DIR's N rank directories (`llama-np convert ... --tensor-parallel N`) as N Ray "
                        "actors, one process per rank (needs: pip install \"llama_np[ray]\")")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="with --tensor-parallel: the Ray cluster (HOST:PORT of `ray start --head`), one rank per "
                        "node, each reading MODEL_DIR/rank-KK-of-NN at the same path on its node (default: a "
                        "local Ray instance on this machine)")


def open_model(a):
    """The model a command runs: one process (llama_np.load), or N tensor-parallel ranks on Ray."""
    if a.tensor_parallel is None:
        if a.ray is not None:
            raise LlamaNpError("--ray needs --tensor-parallel N")
        return load(a.model_dir, fp32=a.fp32_weights)
    return open_tensor_parallel(a.model_dir, a.tensor_parallel, address=a.ray, fp32=a.fp32_weights)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="llama-np", description="LLaMA 2 inference in pure NumPy.", epilog=MAIN_EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("convert", help="convert a checkpoint into a llama_np model directory")
    _add_convert_args(p)

    p = sub.add_parser("quantize", help="int8 copy of a converted model directory (one float32 scale per row)",
                       epilog=QUANTIZE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", help="a converted float16 model directory")
    p.add_argument("out_dir", help="the int8 model directory to create (must not exist, or be empty)")

    p = sub.add_parser("generate", help="complete a prompt, streaming the text", epilog=GENERATE_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", help="a converted model directory")
    p.add_argument("--prompt", required=True, action="append",
                   help="the text to complete (repeat it to generate several prompts as one batch)")
    _add_precision_arg(p)
    _add_sampling_args(p)
    p.add_argument("--logprobs", action="store_true", help="print each token's log-probability after the text")
    p.add_argument("--echo", action="store_true", help="print the prompt before the new text (and score it)")
    _add_parallel_args(p)

    p = sub.add_parser("chat", help="chat with a LLaMA 2 chat model (interactive, or messages piped in)",
                       epilog=CHAT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", help="a converted model directory (a chat model, e.g. llama-2-7b-chat)")
    p.add_argument("--system", default=None, help="a system prompt, kept for the whole conversation")
    _add_sampling_args(p)
    _add_precision_arg(p)
    _add_parallel_args(p)

    p = sub.add_parser("perplexity", help="perplexity of a text file (teacher-forced, sliding windows)",
                       epilog=PERPLEXITY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", help="a converted model directory")
    p.add_argument("file", help="a UTF-8 text file")
    p.add_argument("--context", type=int, default=None, help="window length in tokens (default: max_seq_len)")
    p.add_argument("--stride", type=int, default=None,
                   help="tokens between window starts, in [1, context-1] (default: context/2)")
    _add_precision_arg(p)
    _add_parallel_args(p)

    p = sub.add_parser("demo", help="a LLaMA 2 written by hand continues a passage it has seen (no download)",
                       epilog=DEMO_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt", default=None,
                   help="your own text to continue (default: the example, a passage and then its first words again)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="at most this many new tokens (default: the rest of the example's passage, or 40)")

    p = sub.add_parser("verify", help="check a Meta download against its checklist.chk, or a converted "
                                      "directory against the checksums convert recorded")
    p.add_argument("dir", help="a Meta download (with checklist.chk) or a converted model directory")

    p = sub.add_parser("compare", help="our forward pass beside a PyTorch reference, per layer and component "
                                       "(needs torch)")
    p.add_argument("model_dir", help="a converted model directory")
    p.add_argument("--tokens", type=int, default=16, help="compare on BOS + N-1 seeded random ids (default 16)")
    p.add_argument("--prompt", default=None, help="compare on this text instead (needs the model's tokenizer)")
    return parser


def cmd_convert(a) -> None:
    t0 = time.perf_counter()
    out = convert(a.src, a.out_dir, tokenizer=a.tokenizer, fmt=a.format, max_seq_len=a.max_seq_len,
                  weight_type=a.dtype, verify=not a.no_verify, tensor_parallel=a.tensor_parallel)
    _report_written(Path(a.src), out, a.dtype, t0)


def cmd_quantize(a) -> None:
    t0 = time.perf_counter()
    out = quantize(a.model_dir, a.out_dir)
    _report_written(Path(a.model_dir), out, "int8", t0)


def _report_written(src: Path, out: Path, weight_type: str, t0: float) -> None:
    """wrote OUT (int8): 13.48 GB -> 6.74 GB in 80.1 s   (the source's files, then the new directory's)"""
    size = lambda path: (sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir()
                         else path.stat().st_size)
    print(f"wrote {out} ({weight_type}): {_human(size(src))} -> {_human(size(out))} in "
          f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)


def _human(n_bytes: int) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= div:
            return f"{n_bytes / div:.2f} {unit}"
    return f"{n_bytes} B"


def _unescape(text: str) -> str:
    """--stop "\\n" means a newline (a shell passes backslash-n literally)."""
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], text)


def _check_generation_args(a) -> SamplingParams:
    """Bad options fail before the model is opened."""
    a.stop = check_stop([_unescape(s) for s in a.stop] if a.stop else None)
    return _sampling(a)


def _load_with_tokenizer(a):
    model = open_model(a)
    need_tokenizer(model)
    return model


def cmd_generate(a) -> None:
    params = _check_generation_args(a)
    model = _load_with_tokenizer(a)
    if len(a.prompt) > 1 or a.logprobs:
        return _generate_batch(a, model, params)
    stats = GenerationStats()
    ids = prompt_ids(model, a.prompt[0])
    pieces = stream_ids(model, ids, params, a.stop, continuation=a.echo, stats=stats)   # checks before printing
    if a.echo:
        print(model.tokenizer.decode(ids), end="", flush=True)
    try:
        for piece in pieces:
            print(piece, end="", flush=True)
        print(flush=True)
    except KeyboardInterrupt:                     # Ctrl-C: stop at once, and still say how far it got
        print(f"\n[interrupted: {stats.summary()}]", file=sys.stderr)
        raise
    print(f"[{stats.summary()}]", file=sys.stderr)


def _generate_batch(a, model, params: SamplingParams) -> None:
    """Several prompts (one batch, Meta's text_completion) or --logprobs: printed when done."""
    results = complete(model, [prompt_ids(model, p) for p in a.prompt], params, a.logprobs, a.echo, a.stop)
    for i, (prompt, result) in enumerate(zip(a.prompt, results)):
        if len(results) > 1:
            print(f"=== {i + 1}/{len(results)}: {prompt!r}")
        print(result["generation"], flush=True)
        if a.logprobs:
            print("--- logprob (natural log) per token ---")
            for token, lp in zip(result["token_ids"], result["logprobs"]):
                print(f"{lp:10.4f}  {token:6d}  {model.tokenizer.id_to_piece(token)}")


def cmd_chat(a) -> None:
    params = _check_generation_args(a)
    model = _load_with_tokenizer(a)
    max_seq_len = model.config.max_seq_len
    room = params.new_tokens_within(max_seq_len // 2)     # positions kept free for the answer
    history = [{"role": "system", "content": a.system}] if a.system else []
    interactive = sys.stdin.isatty()
    if interactive:
        print("chatting; end with Ctrl-D", file=sys.stderr)
    for turn in itertools.count():
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        if not line.strip():
            continue
        dialog, dropped = fit_dialog(model.tokenizer, history + [{"role": "user", "content": line.rstrip("\n")}],
                                     max_seq_len - room)
        if dropped:
            print(f"[the conversation outgrew the {max_seq_len}-token context: dropped the {dropped} oldest "
                  f"turn(s){', kept the system prompt' if a.system else ''}]", file=sys.stderr)
        turn_params = dataclasses.replace(params, seed=None if params.seed is None else params.seed + turn)
        answer = chat(model, dialog, stop=a.stop, on_text=lambda s: print(s, end="", flush=True),
                      **dataclasses.asdict(turn_params))
        print(flush=True)
        history = dialog + [answer]


def cmd_perplexity(a) -> None:
    path = Path(a.file)
    if not path.is_file():
        raise LlamaNpError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LlamaNpError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    model = _load_with_tokenizer(a)
    check_window(model, a.context, a.stride)
    result = perplexity_result(model, text, a.context, a.stride, progress=True)
    print(result.summary())


def cmd_demo(a) -> None:
    run_demo(prompt=a.prompt, max_new_tokens=a.max_new_tokens)


def cmd_compare(a) -> None:
    if compare_main(a.model_dir, a.tokens, a.prompt) != 0:
        raise SystemExit(1)                       # a difference above tolerance (not bad input)


def cmd_verify(a) -> None:
    print(verify(a.dir))


COMMANDS = {"convert": cmd_convert, "quantize": cmd_quantize, "verify": cmd_verify, "generate": cmd_generate,
            "chat": cmd_chat, "perplexity": cmd_perplexity,
            "demo": cmd_demo, "compare": cmd_compare}


def main(argv=None) -> int:
    if hasattr(signal, "SIGXFSZ"):                # a file-size limit: let the write fail with EFBIG, and say so
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        a = build_parser().parse_args(argv)
        COMMANDS[a.command](a)
    except BrokenPipeError:                       # `llama-np generate ... | head`: the reader left; so do we
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # (no flush error at exit)
        return 0
    except (LlamaNpError, OSError, MemoryError) as e:   # bad input, an unreadable file, a model too big
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


def one_line(e: BaseException) -> str:
    """An error as one line: OSError's own words with the file, anything else as it says itself."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    text = " ".join(str(e).split())
    return text or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
