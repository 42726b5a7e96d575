"""A model is checked when it is built: every tensor of the spec, its shape, a weight type the
products know; and text needs a tokenizer. Each mistake is one LlamaNpError, never a KeyError
mid-forward or an int8 matrix multiplied unscaled."""
import numpy as np
import pytest

import llama_np
from llama_np import LlamaNpError
from llama_np.layers import linear


@pytest.fixture(scope="module")
def model(random_model_dir):
    return llama_np.load(random_model_dir, fp32="on")


def rebuilt(model, **changes):
    weights = {**model.weights, **changes}
    return llama_np.Llama(model.config, {n: w for n, w in weights.items() if w is not None}, model.tokenizer)


def test_missing_tensor_is_named_when_the_model_is_built(model):
    with pytest.raises(LlamaNpError, match=r"missing tensor 'layers\.1\.feed_forward\.w3\.weight'"):
        rebuilt(model, **{"layers.1.feed_forward.w3.weight": None})


def test_tensor_of_the_wrong_shape_is_refused(model):
    wq = model.weights["layers.0.attention.wq.weight"]
    with pytest.raises(LlamaNpError, match=r"'layers\.0\.attention\.wq\.weight' has shape \(64, 63\)"):
        rebuilt(model, **{"layers.0.attention.wq.weight": wq[:, :63]})


def test_unexpected_tensor_is_refused(model):
    with pytest.raises(LlamaNpError, match="unexpected tensor 'layers.2.ffn_norm.weight'"):
        rebuilt(model, **{"layers.2.ffn_norm.weight": np.ones(64, np.float32)})


@pytest.mark.parametrize("dtype", [np.int8, np.float64, np.int32])
def test_matrix_of_an_unknown_weight_type_is_refused(model, dtype):
    w = np.ones(model.weights["output.weight"].shape, dtype)
    with pytest.raises(LlamaNpError, match="'output.weight'"):
        rebuilt(model, **{"output.weight": w})
    with pytest.raises(LlamaNpError):
        linear(np.ones((1, 2, w.shape[1]), np.float32), w)     # and the product itself refuses it


def test_linear_on_float32_and_float16_weights_equals_the_float64_product():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 48)).astype(np.float32)
    w16 = rng.standard_normal((40, 48)).astype(np.float16)
    expected = x.astype(np.float64) @ w16.astype(np.float64).T                         # (3, 5, 40)
    for w in (w16, w16.astype(np.float32)):
        np.testing.assert_allclose(linear(x, w), expected, rtol=1e-5, atol=1e-5)


def test_text_without_a_tokenizer_is_a_clear_error_not_an_attribute_error(model):
    bare = llama_np.Llama(model.config, model.weights, tokenizer=None)
    for call in (lambda: list(llama_np.stream(bare, [1, 5, 9], max_new_tokens=3)),
                 lambda: llama_np.text_completion(bare, [[1, 5, 9]], max_new_tokens=3),
                 lambda: llama_np.chat_completion(bare, [[{"role": "user", "content": "hi"}]], max_new_tokens=3),
                 lambda: bare.generate("Once", max_new_tokens=3)):
        with pytest.raises(LlamaNpError, match="no tokenizer"):
            call()
    greedy = bare.generate([1, 5, 9], max_new_tokens=4, temperature=0.0)              # ids need no tokenizer
    ids = [1, 5, 9]
    for _ in range(4):                                                                 # recomputation, no cache
        ids.append(int(np.argmax(bare.forward(np.array([ids]))[0, -1])))
    assert greedy == ids[3:]
