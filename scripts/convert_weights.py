#!/usr/bin/env python3
"""Convert a checkpoint into a llama_np model directory: the same as `llama-np convert`.

    python scripts/convert_weights.py SRC OUT_DIR [--tokenizer PATH] [--format auto|meta|llama2c|hf]
"""
import sys

from llama_np.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
