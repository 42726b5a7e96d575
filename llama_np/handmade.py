"""A LLaMA 2 whose weights are written by hand, not trained: it continues text it has seen once.

    "... The cat sat on the mat. The cat sat on the"  ->  " mat. The cat sat on the mat. ..."

The model is an ordinary LLaMA 2 — embeddings, RMSNorm, rotary embeddings with Meta's interleaved
pairs, grouped-query attention, SwiGLU, the classifier — written into the converted format, then
loaded and run like any other (transformers' LlamaForCausalLM runs it too). Only its numbers are
special: every one comes from a formula, derived in the docstring of the function that writes it.

The circuit (Elhage et al. 2021, Olsson et al. 2022: previous-token heads feeding an induction head)

    layer 0, attention   four PREVIOUS-TOKEN heads, two on each of two identical key/value heads
                         (GQA): query head h looks exactly h + 1 positions back and copies that
                         token's identity, so position t also holds x[t-1], x[t-2], x[t-3], x[t-4]
    layer 0, SwiGLU      one hidden unit, an AND gate: it recognises the start of the text (BOS
                         whose four predecessors are BOS, which only position 0 sees) and blanks it
    layer 1, attention   the INDUCTION head: its query holds x[t], x[t-1], x[t-2], x[t-3], the key
                         at j holds x[j-1], x[j-2], x[j-3], x[j-4]: it attends to the position just
                         after the earlier occurrence of the last four tokens and copies the token
                         there into the subspace the classifier reads; nothing matches -> the blank
    layer 1, SwiGLU      nothing (all zero)
    classifier           reads the copied token; when nothing was copied, end-of-text wins

Why four tokens: the demo vocabulary has 320 pieces, so in a few hundred random tokens most
pieces occur more than once and "the token after the last x[t]" is ambiguous, and in English
text split into such small pieces even three pieces ("▁", "w", "a" of "walked" and "watch")
recur. The match is lexicographic — the current token first, then the one before it, and so on
— so partial matches still work where a full one does not exist (the start of a repetition).

The residual stream (dim D = 4 * head_dim = 1424; a token identity is C = 2p = 74 numbers)

    CONST      1 at every position: LLaMA has no biases, so constant queries and keys read this
    IS_BOS     1 on the BOS token      NOT_BOS  1 on every other token (so every embedding has the
                                                same length, and RMSNorm treats all alike)
    START      sqrt(5) at the start of the text (written by layer 0's SwiGLU), else 0
    TOKEN[0]   x[t]'s code (the embedding)      TOKEN[k], k = 1..4: x[t-k]'s code (layer 0)
    NEXT       the code of the predicted next token (layer 1)
    the rest   zero

Token identities are discrete "chirps" (quadratic phases, the vectors of the classic mutually
unbiased bases): token v = a*p + b is the complex unit vector
u_v(x) = exp(2 pi i (a x^2 + b x) / p) / sqrt(p), x = 0 .. p-1, with p = 37 prime, its real and
imaginary parts interleaved like rotary pairs. Two chirps with the same a are exactly orthogonal
(a discrete Fourier basis); with different a, |<u_v, u_w>| = 1/sqrt(p) exactly (a Gauss sum). So
any two of the 320 codes overlap by at most 1/sqrt(37) = 0.164, every code has length 1, and
9 bases x 37 = 333 codes fit in 74 numbers: near-orthogonal with a guarantee, not by the luck
of random vectors.

Rotary embeddings: pair i of a head turns by w_i = rope_theta^(-2i/head_dim) radians per position.
We choose rope_theta = 2^(head_dim/4), so w_i = 2^(-i/2): pairs 0, 2, 4, ..., 18 turn at 1, 1/2,
..., 1/512 radians per token — a binary ladder of clocks that tells every distance in the context
apart (the previous-token heads use it) — while pairs from 29 on turn by less than 0.1 radian
over the whole 2048-token context: there a dot product of rotated vectors is (almost exactly)
the dot product of the vectors themselves, and the induction head compares token identities
there. (2^89 fits float32, in which Meta's and Hugging Face's code compute the frequencies.)

RMSNorm: every position's residual vector has a known length (squared: 3 after the embedding, 7
after layer 0's heads, 8 once NEXT is written), so each norm weight is the constant that undoes
the division: rms_norm(x) = x (to float16 rounding), and every block reads the stream as it is.

Scores are in nats (the softmax's logits, after attention's 1/sqrt(head_dim)): a margin of m
between the right key and a wrong one gives the wrong one e^-m of the right one's probability.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import ModelArgs
from .errors import LlamaNpError
from .layers import rope_tables
from .spec import expected_shapes
from .tokenizer import Tokenizer
from .weights import write_model_dir

P = 37                              # chirp length (a prime): a token identity is 2P numbers
MAX_SEQ_LEN = 2048
N_LAYERS, N_HEADS, N_KV_HEADS = 2, 4, 2     # two kv heads: tensor parallelism can cut it in two
CONTEXT = N_HEADS                   # tokens the induction head matches: x[t] and the 3 before it
HIDDEN_DIM = 32                     # SwiGLU width; one unit is used (layer 0's start detector)
PREVIOUS_TOKEN_HEAD = (0, 0)        # (layer, head): head h of layer 0 looks h + 1 positions back
INDUCTION_HEAD = (1, 0)             # heads 1..3 of layer 1 are idle (zero query, zero output), and kv head 1

POSITION_SCORES = 6.0 * np.array([6, 1, 1, 1, 1, 1, 1, 1, 1, 1])   # nats, on the pairs turning at 2^-k, k = 0..9
MATCH_SCORES = (40.0, 16.0, 8.0, 4.0)  # nats for x[t-k] = x[j-1-k], k = 0..3
SINK_SCORE = 32.0                   # nats: the blank start, where the induction head looks when nothing matches
RESTART_SCORE = 10.0                # nats for a key two after BOS: between equal matches, a repeat restarts at the beginning
NEXT_LOGIT = 16.0                   # logit of the copied token
EOS_LOGIT = 5.0                     # logit of end-of-text, always: it wins when nothing was copied
START_GAIN = 16.0                   # sharpness of the start detector's gate
SLOW_TURN = 0.1                     # radians: the most a comparing pair may turn over the whole context


@dataclass(frozen=True)
class Layout:
    """Where everything lives: coordinates of the residual stream (dim) and of a head (head_dim)."""
    vocab_size: int
    code: int                       # C: numbers per token identity (2P)
    head_dim: int
    first_slow_pair: int            # pairs from here on turn < SLOW_TURN over the context

    CONST, IS_BOS, NOT_BOS, START = 0, 1, 2, 3

    @property
    def dim(self) -> int:
        return N_HEADS * self.head_dim

    def token(self, k: int) -> slice:
        """Residual coordinates of x[t-k]'s code: k = 0 the token itself, 1..CONTEXT its predecessors."""
        begin = 4 + k * self.code
        return slice(begin, begin + self.code)

    @property
    def next(self) -> slice:
        """Residual coordinates of the predicted next token's code."""
        return self.token(CONTEXT + 1)

    def position_dims(self, k: int) -> tuple[int, int]:
        """Head coordinates of rotary pair 2k, which turns at 2^-k radians per position."""
        return 4 * k, 4 * k + 1

    def match_dims(self, k: int) -> slice:
        """Head coordinates where the induction head compares x[t-k] (query) with x[j-1-k] (key);
        the current token (k = 0) gets the slowest pairs."""
        end = self.head_dim - 2 - k * self.code
        return slice(end - self.code, end)

    @property
    def sink_dim(self) -> int:
        """Head coordinate (the slowest pair) where the induction head's constant query meets START."""
        return self.head_dim - 2


def make_layout(vocab_size: int, max_seq_len: int = MAX_SEQ_LEN) -> Layout:
    """The smallest head that holds the position ladder and four token codes in slow pairs.

    With w_i = 2^(-i/2), pair i turns by at most 2^(-i/2) (max_seq_len - 1) radians; the first pair
    where that is <= SLOW_TURN is i0 = ceil(2 log2((max_seq_len - 1) / SLOW_TURN)) (29 for 2048).
    A head needs 2 i0 fast coordinates, CONTEXT codes and 2 for the sink pair, rounded up to a
    multiple of 4 so that rope_theta = 2^(head_dim/4) is a whole power of two.
    """
    if vocab_size > P * P:
        raise LlamaNpError(f"the hand-written model has {P * P} token codes; a vocabulary of {vocab_size} is too big")
    code = 2 * P
    first_slow_pair = math.ceil(2 * math.log2((max_seq_len - 1) / SLOW_TURN))
    head_dim = 4 * math.ceil((2 * first_slow_pair + CONTEXT * code + 2) / 4)
    return Layout(vocab_size, code, head_dim, first_slow_pair)


def handmade_args(vocab_size: int, max_seq_len: int = MAX_SEQ_LEN) -> ModelArgs:
    """The model's shape: 2 layers, 4 query heads on 2 key/value heads, rope_theta 2^(head_dim/4)."""
    lay = make_layout(vocab_size, max_seq_len)
    return ModelArgs(dim=lay.dim, n_layers=N_LAYERS, n_heads=N_HEADS, n_kv_heads=N_KV_HEADS, vocab_size=vocab_size,
                     hidden_dim=HIDDEN_DIM, norm_eps=1e-5, rope_theta=2.0 ** (lay.head_dim // 4),
                     max_seq_len=max_seq_len)


def chirp_codes(vocab_size: int, p: int = P) -> np.ndarray:
    """Token identities (V, 2p): token v = a p + b is exp(2 pi i (a x^2 + b x) / p) / sqrt(p), x = 0..p-1,
    real and imaginary parts interleaved. Unit length; overlap 0 within a basis (same a), at most
    1/sqrt(p) across bases (|Gauss sum| = sqrt(p) for prime p)."""
    a, b = np.divmod(np.arange(vocab_size), p)                                  # (V,) each
    x = np.arange(p)                                                            # (p,)
    phase = 2 * np.pi * ((a[:, None] * x * x + b[:, None] * x) % p) / p         # (V, p)
    codes = np.empty((vocab_size, 2 * p))                                       # (V, 2p)
    codes[:, 0::2], codes[:, 1::2] = np.cos(phase), np.sin(phase)
    return codes / np.sqrt(p)


def norm_gain(args: ModelArgs, squared_length: float) -> np.ndarray:
    """An RMSNorm weight that undoes the norm for vectors of this squared length:
    rms_norm(x) = x / sqrt(|x|^2 / D + eps) * g = x  when  g = sqrt(|x|^2 / D + eps)."""
    return np.full(args.dim, np.sqrt(squared_length / args.dim + args.norm_eps))


def embedding_weights(lay: Layout, codes: np.ndarray, bos_id: int) -> np.ndarray:
    """tok_embeddings (V, D): the token's code in TOKEN[0], 1 in CONST, 1 in IS_BOS or NOT_BOS.
    Every row has squared length 1 + 1 + 1 = 3."""
    emb = np.zeros((lay.vocab_size, lay.dim))
    emb[:, lay.token(0)] = codes
    emb[:, lay.CONST] = 1.0
    emb[:, lay.NOT_BOS] = 1.0
    if 0 <= bos_id < lay.vocab_size:
        emb[bos_id, [lay.IS_BOS, lay.NOT_BOS]] = 1.0, 0.0
    return emb


def previous_token_attention(lay: Layout, args: ModelArgs) -> dict[str, np.ndarray]:
    """Layer 0: query head h attends to exactly d = h + 1 positions back and copies that token's
    code into TOKEN[d]. Each key/value head serves two query heads (GQA), and both kv heads are
    the same: one key, one value; the query heads differ only in how far their query is turned.

    Key: on each ladder pair 2k (turning at w = 2^-k) the constant (1, 0), read from CONST.
    Query of head h: on pair 2k, a_k sqrt(head_dim) (cos dw, -sin dw), the key turned back by d
    positions — taken from the model's own rotary table at position d. Rotary then turns the
    query at t by t w and the key at j by j w, so the score is
        q.k / sqrt(head_dim) = sum_k a_k cos(w_k (t - j - d)),
    which peaks (sum a_k = 90 nats) exactly at j = t - d. a = 6 (6, 1, ..., 1): the fast pair tells
    t - d from its neighbours (1 - cos 1 = 0.46 each), the slower ones rule out every far distance:
    every other distance up to 2047 scores at least 16.6 nats below the peak. Before position d
    there is nothing that far back, and the head takes position 0, the closest to its target.
    Value: the token's code (head coordinates 0..C-1). Output: head h's value -> TOKEN[d].
    """
    HD, C, D = lay.head_dim, lay.code, lay.dim
    cos, sin = rope_tables(HD, N_HEADS + 1, args.rope_theta)                  # (N_HEADS + 1, HD/2)
    wq, wk = np.zeros((N_HEADS * HD, D)), np.zeros((N_KV_HEADS * HD, D))
    wv, wo = np.zeros((N_KV_HEADS * HD, D)), np.zeros((D, N_HEADS * HD))
    for k, a in enumerate(POSITION_SCORES):
        re, im = lay.position_dims(k)
        for g in range(N_KV_HEADS):
            wk[g * HD + re, lay.CONST] = 1.0
        for h in range(N_HEADS):
            wq[h * HD + re, lay.CONST] = a * np.sqrt(HD) * cos[h + 1, 2 * k]
            wq[h * HD + im, lay.CONST] = -a * np.sqrt(HD) * sin[h + 1, 2 * k]
    for g in range(N_KV_HEADS):
        wv[g * HD:g * HD + C, lay.token(0)] = np.eye(C)
    for h in range(N_HEADS):
        wo[lay.token(h + 1), h * HD:h * HD + C] = np.eye(C)
    return {"wq": wq, "wk": wk, "wv": wv, "wo": wo}


def start_detector_ffn(lay: Layout, codes: np.ndarray, bos_id: int) -> dict[str, np.ndarray]:
    """Layer 0's SwiGLU, one hidden unit: an AND gate that blanks the start of the text.

    Position 0 of a text that begins with BOS has nothing before it, so all four previous-token
    heads copied BOS itself: it is the one place where x[t] = x[t-1] = ... = x[t-4] = BOS.
        gate  z = A (IS_BOS + <e_BOS, TOKEN[1]> + ... + <e_BOS, TOKEN[4]> - 4.5 CONST)
        up    u = CONST = 1,        hidden = silu(z) u
    At the start z = A/2 = 8 and silu(8) = 7.997; anywhere else at least one term is missing (a
    code overlaps e_BOS by at most 0.164), so z <= -0.34 A = -5.4 and |silu(z)| < 0.025 — 0.3% of
    the start's, and that only for a BOS after three BOS; after a BOS in ordinary text z < -40.
    w2 turns the unit into START += sqrt(5) and TOKEN[0..4] -= e_BOS (divided by silu(A/2), so that
    exactly these amounts arrive at the start): position 0 becomes a blank — no token, no context,
    only START — of the same squared length as every other position, 1 + 1 + 5 = 7. The induction
    head looks there when nothing matches, and its value there is nothing.
    """
    w1, w2, w3 = np.zeros((HIDDEN_DIM, lay.dim)), np.zeros((lay.dim, HIDDEN_DIM)), np.zeros((HIDDEN_DIM, lay.dim))
    if not 0 <= bos_id < lay.vocab_size:
        return {"w1": w1, "w2": w2, "w3": w3}
    bos = codes[bos_id]                                                         # (C,)
    w1[0, lay.IS_BOS], w1[0, lay.CONST] = START_GAIN, -(CONTEXT + 0.5) * START_GAIN
    for k in range(1, CONTEXT + 1):
        w1[0, lay.token(k)] = START_GAIN * bos
    w3[0, lay.CONST] = 1.0
    z = START_GAIN * (1 + CONTEXT * bos @ bos - (CONTEXT + 0.5))               # the gate at the start: A/2
    on = z / (1 + np.exp(-z))                                                   # silu(A/2)
    w2[lay.START, 0] = np.sqrt(CONTEXT + 1) / on
    for k in range(CONTEXT + 1):
        w2[lay.token(k), 0] = -bos / on
    return {"w1": w1, "w2": w2, "w3": w3}


def induction_attention(lay: Layout, codes: np.ndarray, bos_id: int) -> dict[str, np.ndarray]:
    """Layer 1: the induction head (query head 0) attends to the position after the earlier
    occurrence of the last four tokens and copies the token found there into NEXT.

    Key at j, in slow pairs (rotation negligible): x[j-1-k] (TOKEN[k+1]) in match slot k, k = 0..3,
    and START / sqrt(5) on the sink pair. Query at t: s_k sqrt(head_dim) x[t-k] (TOKEN[k]) in match
    slot k, with s = (40, 16, 8, 4), and 32 sqrt(head_dim) from CONST on the sink pair. So key j
    scores 40 [x[t] = x[j-1]] + 16 [x[t-1] = x[j-2]] + 8 [x[t-2] = x[j-3]] + 4 [x[t-3] = x[j-4]],
    or 32 at the blank start; a slot whose codes differ adds at most 0.164 of its weight (6.6,
    2.6, 1.3, 0.7). Each weight is more than all the later ones together (16 > 8 + 4), so the key
    with the longest run of matching tokens back from the current one wins, and a key needs the
    current token to beat the blank (40 > 32 > 16 + 8 + 4).
    One constant more, 10 e_BOS from CONST in slot 1: a key whose x[j-2] is BOS — the second token
    of the text — gains 10. When the current token occurred several times and nothing before it
    tells them apart (the first token of a repetition: its predecessors are the end of the text, not
    its start), the occurrence at the very start wins: a repetition restarts at the beginning.
    It never outweighs a real match: 10 < 16, the first token of context.
    The key and value live in kv head 0, which query heads 0 and 1 read. Value: the token's code
    at j (nothing at the blank start). Output: head 0's value -> NEXT. Query heads 1..3 (and kv
    head 1) are zero: idle.
    """
    HD, C, D = lay.head_dim, lay.code, lay.dim
    wq, wk = np.zeros((N_HEADS * HD, D)), np.zeros((N_KV_HEADS * HD, D))
    wv, wo = np.zeros((N_KV_HEADS * HD, D)), np.zeros((D, N_HEADS * HD))
    for k, score in enumerate(MATCH_SCORES):
        wq[lay.match_dims(k), lay.token(k)] = score * np.sqrt(HD) * np.eye(C)
        wk[lay.match_dims(k), lay.token(k + 1)] = np.eye(C)
    wq[lay.sink_dim, lay.CONST] = SINK_SCORE * np.sqrt(HD)
    if 0 <= bos_id < lay.vocab_size:
        wq[lay.match_dims(1), lay.CONST] = RESTART_SCORE * np.sqrt(HD) * codes[bos_id]
    wk[lay.sink_dim, lay.START] = 1 / np.sqrt(CONTEXT + 1)
    wv[:C, lay.token(0)] = np.eye(C)
    wo[lay.next, :C] = np.eye(C)
    return {"wq": wq, "wk": wk, "wv": wv, "wo": wo}


def output_weights(lay: Layout, codes: np.ndarray, eos_id: int) -> np.ndarray:
    """output (V, D): logit_v = 16 <code_v, NEXT>, + 5 for end-of-text (from CONST). A copied token
    scores 16, every other at most 16 x 0.164 = 2.6 (end-of-text at most 7.6); with nothing copied
    (NEXT = 0) end-of-text's 5 wins."""
    out = np.zeros((lay.vocab_size, lay.dim))
    out[:, lay.next] = NEXT_LOGIT * codes
    if 0 <= eos_id < lay.vocab_size:
        out[eos_id, lay.CONST] = EOS_LOGIT
    return out


def handmade_weights(args: ModelArgs, bos_id: int, eos_id: int) -> dict[str, np.ndarray]:
    """Every tensor of the model (Meta's names) from the formulas above; all that is not written is zero.
    The codes are rounded to float16 first, as the file stores them, so that the start detector's
    amounts are computed with the very numbers the model will multiply."""
    lay = make_layout(args.vocab_size, args.max_seq_len)
    codes = chirp_codes(args.vocab_size).astype(np.float16).astype(np.float64)   # as the file will store them
    w = {name: np.zeros(shape) for name, shape in expected_shapes(args).items()}
    w["tok_embeddings.weight"] = embedding_weights(lay, codes, bos_id)
    blocks = {0: (previous_token_attention(lay, args), start_detector_ffn(lay, codes, bos_id)),
              1: (induction_attention(lay, codes, bos_id), {})}
    lengths = {0: (3, 3 + CONTEXT), 1: (3 + CONTEXT, 4 + CONTEXT)}   # squared length of the stream at each norm
    for i, (attention, ffn) in blocks.items():
        w.update({f"layers.{i}.attention.{n}.weight": m for n, m in attention.items()})
        w.update({f"layers.{i}.feed_forward.{n}.weight": m for n, m in ffn.items()})
        w[f"layers.{i}.attention_norm.weight"] = norm_gain(args, lengths[i][0])
        w[f"layers.{i}.ffn_norm.weight"] = norm_gain(args, lengths[i][1])
    w["norm.weight"] = norm_gain(args, 4 + CONTEXT)
    w["output.weight"] = output_weights(lay, codes, eos_id)
    return w


def write_handmade_model(out_dir, tokenizer_path, progress: bool = False) -> Path:
    """Write the model for this SentencePiece tokenizer as a converted model directory."""
    tok = Tokenizer(tokenizer_path)
    args = handmade_args(tok.n_words)
    weights = handmade_weights(args, tok.bos_id, tok.eos_id)
    source = {"format": "handmade", "written_by": "llama_np.handmade"}
    return write_model_dir(out_dir, args, [(n, (lambda a=a: a)) for n, a in weights.items()], source,
                           tokenizer_path, progress)
