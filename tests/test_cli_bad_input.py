"""Bad input ends with one line `error: ...` on stderr and exit status 2: no traceback, and no
output directory left behind looking complete."""
import json
import shutil

import pytest
import torch

from conftest import assert_one_line_error, run_cli
from reference import random_meta_weights, write_meta_checkpoint
from test_meta_vs_pytorch import train_tokenizer

PARAMS = {"dim": 32, "multiple_of": 32, "n_heads": 4, "n_kv_heads": 2, "n_layers": 2, "norm_eps": 1e-5,
          "vocab_size": -1}
HIDDEN = 96  # int(2*4*32/3) = 85, rounded up to 32


@pytest.fixture(scope="module")
def meta_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    src = root / "llama-2-tiny"
    vocab = train_tokenizer(root / "tokenizer.model")
    write_meta_checkpoint(src, PARAMS, random_meta_weights(32, 2, 4, 2, vocab, HIDDEN, seed=3), n_shards=1)
    shutil.copy(root / "tokenizer.model", src / "tokenizer.model")
    return src


@pytest.fixture(scope="module")
def model_dir(meta_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "tiny-np"
    result = run_cli("convert", meta_dir, out, "--max-seq-len", "24")
    assert result.returncode == 0, result.stderr
    return out


def broken_copy(meta_dir, tmp_path, name="src"):
    dst = tmp_path / name
    shutil.copytree(meta_dir, dst)
    return dst


def test_convert_then_generate_works(model_dir):
    result = run_cli("generate", model_dir, "--prompt", "Once upon", "--max-new-tokens", "5", "--seed", "1",
                     "--echo")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Once upon")                # --echo prints the prompt first
    assert "prompt tokens" in result.stderr and "decode" in result.stderr


def test_missing_checkpoint_directory(tmp_path):
    assert_one_line_error(run_cli("convert", tmp_path / "nope", tmp_path / "out"), "not found")
    assert not (tmp_path / "out").exists()


def test_corrupt_pth(meta_dir, tmp_path):
    src = broken_copy(meta_dir, tmp_path)
    (src / "consolidated.00.pth").write_bytes(b"this is not a checkpoint" * 100)
    assert_one_line_error(run_cli("convert", src, tmp_path / "out"), "consolidated.00.pth")
    assert not (tmp_path / "out").exists()


def test_truncated_pth(meta_dir, tmp_path):
    src = broken_copy(meta_dir, tmp_path)
    data = (src / "consolidated.00.pth").read_bytes()
    (src / "consolidated.00.pth").write_bytes(data[: len(data) // 2])
    assert_one_line_error(run_cli("convert", src, tmp_path / "out"), "consolidated.00.pth")
    assert not (tmp_path / "out").exists()


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("true",))


def test_pickle_with_code_is_refused(meta_dir, tmp_path):
    src = broken_copy(meta_dir, tmp_path)
    sd = torch.load(src / "consolidated.00.pth", weights_only=True)
    sd["payload"] = _Evil()
    torch.save(sd, src / "consolidated.00.pth")
    assert_one_line_error(run_cli("convert", src, tmp_path / "out"), "system", "refusing")


def test_params_json_missing_a_key(meta_dir, tmp_path):
    src = broken_copy(meta_dir, tmp_path)
    params = dict(PARAMS)
    del params["n_heads"]
    (src / "params.json").write_text(json.dumps(params))
    assert_one_line_error(run_cli("convert", src, tmp_path / "out"), "n_heads")


def test_shape_mismatch_names_the_tensor(meta_dir, tmp_path):
    src = broken_copy(meta_dir, tmp_path)
    sd = torch.load(src / "consolidated.00.pth", weights_only=True)
    sd["layers.1.feed_forward.w3.weight"] = sd["layers.1.feed_forward.w3.weight"][:64].clone()
    torch.save(sd, src / "consolidated.00.pth")
    result = run_cli("convert", src, tmp_path / "out")
    assert_one_line_error(result, "layers.1.feed_forward.w3.weight", "(64, 32)", "(96, 32)")
    assert not (tmp_path / "out").exists()
    assert not any(p.name.startswith(".out.partial") for p in tmp_path.iterdir()), "temporary dir left behind"


def test_existing_non_empty_output_directory(meta_dir, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert_one_line_error(run_cli("convert", meta_dir, tmp_path / "out"), "not empty")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_prompt_longer_than_max_seq_len(model_dir):
    assert_one_line_error(run_cli("generate", model_dir, "--prompt", "the robot " * 40), "max_seq_len")


@pytest.mark.parametrize("flags, fragment", [
    (["--temperature", "-0.5"], "--temperature"),
    (["--top-p", "0"], "--top-p"),
    (["--top-p", "1.5"], "--top-p"),
    (["--top-k", "-3"], "--top-k"),
    (["--max-new-tokens", "-1"], "--max-new-tokens"),
    (["--temperature", "hot"], "invalid float"),
    (["--frobnicate"], "unrecognized"),
])
def test_bad_sampling_options(model_dir, flags, fragment):
    assert_one_line_error(run_cli("generate", model_dir, "--prompt", "hi", *flags), fragment)


def test_generate_on_a_directory_that_is_not_a_model(tmp_path):
    assert_one_line_error(run_cli("generate", tmp_path, "--prompt", "hi"), "config.json")


def test_corrupt_converted_weights(model_dir, tmp_path):
    bad = tmp_path / "bad-np"
    shutil.copytree(model_dir, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) - 1000])
    assert_one_line_error(run_cli("generate", bad, "--prompt", "hi"), "model.safetensors")
