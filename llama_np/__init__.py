"""llama_np: Meta's LLaMA 2 inference in pure NumPy."""
from .config import ModelArgs
from .errors import LlamaNpError
from .kv_cache import KVCache
from .model import Llama, load
from .tokenizer import Tokenizer

__all__ = ["ModelArgs", "LlamaNpError", "KVCache", "Llama", "load", "Tokenizer"]
__version__ = "0.1.0"
