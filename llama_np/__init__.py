"""llama_np: Meta's LLaMA 2 inference in pure NumPy."""
from .chat import chat_completion, encode_dialog
from .config import ModelArgs
from .errors import LlamaNpError
from .generation import generate_batch, stream, text_completion
from .kv_cache import KVCache
from .model import Llama, load
from .perplexity import perplexity
from .sampling import SamplingParams
from .tokenizer import Tokenizer

__all__ = ["ModelArgs", "LlamaNpError", "KVCache", "Llama", "load", "Tokenizer", "encode_dialog", "chat_completion",
           "generate_batch", "stream", "text_completion", "perplexity", "SamplingParams"]
__version__ = "0.1.0"
