"""The `llama-np` command (also `python -m llama_np`).

Bad input ends with one line `error: ...` on stderr and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import sys

from .errors import LlamaNpError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse would print the usage first)
        raise LlamaNpError(f"{self.prog}: {message} (see --help)")


def _add_convert_args(p: argparse.ArgumentParser) -> None:
    from .checkpoints.convert import FORMATS

    p.add_argument("src", help="the checkpoint: a Meta directory (params.json, consolidated.NN.pth)")
    p.add_argument("out_dir", help="the converted model directory to create (must not exist, or be empty)")
    p.add_argument("--tokenizer", help="tokenizer.model to copy in (default: the one beside the checkpoint)")
    p.add_argument("--format", default="auto", choices=FORMATS, help="checkpoint format (default: auto)")
    p.add_argument("--max-seq-len", type=int, default=None,
                   help="context length to record (default: the source's, else 4096 as LLaMA 2)")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=256, help="at most this many new tokens (default 256)")
    p.add_argument("--temperature", type=float, default=0.6, help="0 = greedy (default 0.6, as Meta)")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass in (0, 1] (default 0.9)")
    p.add_argument("--top-k", type=int, default=0, help="keep only the k most likely tokens (default 0 = off)")
    p.add_argument("--seed", type=int, default=None, help="random seed for reproducible sampling")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="llama-np", description="LLaMA 2 inference in pure NumPy.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("convert", help="convert a checkpoint into a llama_np model directory")
    _add_convert_args(p)

    p = sub.add_parser("generate", help="complete a prompt, streaming the text")
    p.add_argument("model_dir", help="a converted model directory")
    p.add_argument("--prompt", required=True, help="the text to complete")
    p.add_argument("--cache-fp32", default="auto", choices=["auto", "on", "off"],
                   help="float32 copies of the weights: on, off (convert float16 blocks on the fly), "
                        "or auto = on when they fit in half of the available RAM (default)")
    _add_sampling_args(p)

    p = sub.add_parser("demo", help="build a tiny random-weight model and generate from it (no download)")
    p.add_argument("--prompt", default="Once upon a time")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    return parser


def cmd_convert(a) -> None:
    from .checkpoints.convert import convert

    out = convert(a.src, a.out_dir, tokenizer=a.tokenizer, fmt=a.format, max_seq_len=a.max_seq_len)
    print(f"wrote {out}", file=sys.stderr)


def cmd_generate(a) -> None:
    from . import load
    from .generation import GenerationStats

    model = load(a.model_dir, fp32=a.cache_fp32)
    if model.tokenizer is None:
        raise LlamaNpError(f"{a.model_dir} has no tokenizer.model, so it cannot turn text into tokens: "
                           f"convert it again with --tokenizer PATH")
    stats = GenerationStats()
    print(a.prompt, end="", flush=True)
    model.generate(a.prompt, max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_p=a.top_p,
                   top_k=a.top_k, seed=a.seed, on_text=lambda s: print(s, end="", flush=True), stats=stats)
    print(flush=True)
    print(f"[{stats.summary()}]", file=sys.stderr)


def cmd_demo(a) -> None:
    from .demo import run_demo

    run_demo(prompt=a.prompt, max_new_tokens=a.max_new_tokens, seed=a.seed)


COMMANDS = {"convert": cmd_convert, "generate": cmd_generate, "demo": cmd_demo}


def main(argv=None) -> int:
    try:
        a = build_parser().parse_args(argv)
        COMMANDS[a.command](a)
    except LlamaNpError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OSError, MemoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
