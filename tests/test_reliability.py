"""Killed runs, full disks, two runs at once, corrupt downloads, closed pipes: refused cleanly,
nothing lost — each tried for real (signals, RLIMIT_FSIZE, two processes), not with mocks."""
import hashlib
import json
import os
import resource
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from conftest import REPO, assert_one_line_error, rendered_lines, run_cli
from llama_np.weights import read_safetensors
from reference import random_meta_weights, write_meta_checkpoint

SHAPE = dict(dim=256, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=6000, hidden_dim=704)


def write_bin(path: Path, seed: int = 0) -> Path:
    """A llama2.c legacy .bin of ~40 MB, so that converting it takes long enough to be interrupted."""
    d, L, F, V, H, KVH = (SHAPE[k] for k in ("dim", "n_layers", "hidden_dim", "vocab_size", "n_heads", "n_kv_heads"))
    hd, S = d // H, 64
    n = V * d + L * d + L * (2 * d * d + 2 * KVH * hd * d) + L * d + 3 * L * F * d + d + 2 * S * hd // 2 + V * d
    data = (np.random.default_rng(seed).standard_normal(n, dtype=np.float32) * 0.05).astype("<f4")
    path.write_bytes(struct.pack("<7i", d, F, L, H, KVH, -V, S) + data.tobytes())
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_bin(tmp_path_factory.mktemp("src") / "model.bin")


@pytest.fixture(scope="module")
def reference_dir(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    r = run_cli("convert", source, out)
    assert r.returncode == 0, r.stderr
    return out


def convert_cmd(src, out):
    return [sys.executable, "-m", "llama_np", "convert", str(src), str(out)]


def env():
    return {**os.environ, "PYTHONPATH": str(REPO)}


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)


def test_kill_at_any_point_leaves_no_output_and_the_next_run_is_byte_identical(source, reference_dir, tmp_path):
    t0 = time.perf_counter()
    subprocess.run(convert_cmd(source, tmp_path / "timing"), env=env(), capture_output=True, check=True)
    duration = time.perf_counter() - t0
    out = tmp_path / "out"
    for fraction in (0.3, 0.6, 0.8, 0.9, 0.95):
        proc = subprocess.Popen(convert_cmd(source, out), env=env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(duration * fraction)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if out.exists():                                   # it finished before the kill: complete
            assert same_files(out, reference_dir)
            continue
        r = subprocess.run(convert_cmd(source, out), env=env(), capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert same_files(out, reference_dir)
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], list(tmp_path.iterdir())
        for p in sorted(out.iterdir()):
            p.unlink()
        out.rmdir()


def test_ctrl_c_during_conversion_exits_130_with_one_line_and_leaves_nothing(source, tmp_path):
    proc = subprocess.Popen(convert_cmd(source, tmp_path / "out"), env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (tmp_path / ".out.partial").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)                                   # until it is writing
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the conversion finished before the signal (a very fast machine)")
    assert proc.returncode == 130, err
    assert rendered_lines(err) == ["interrupted"] and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_full_disk_is_one_line_naming_the_output_and_leaves_nothing(source, tmp_path):
    limit = 2 << 20                                         # a 2 MB file-size limit: the weights do not fit
    r = subprocess.run(convert_cmd(source, tmp_path / "out"), env=env(), capture_output=True, text=True,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert_one_line_error(r, str(tmp_path / "out"), "disk is full")
    assert list(tmp_path.iterdir()) == []


def test_two_conversions_into_one_directory_one_wins_the_other_says_why(source, reference_dir, tmp_path):
    out = tmp_path / "out"
    procs = [subprocess.Popen(convert_cmd(source, out), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "another conversion" in loser or "exists and is not empty" in loser, loser
    assert same_files(out, reference_dir)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_converted_safetensors_opens_with_the_safetensors_library_and_equals_ours(reference_dir):
    theirs = safetensors.numpy.load_file(str(reference_dir / "model.safetensors"))
    ours = read_safetensors(reference_dir / "model.safetensors")
    assert theirs.keys() == ours.keys()
    for name in ours:
        assert theirs[name].dtype == ours[name].dtype and np.array_equal(theirs[name], ours[name]), name


def test_verify_names_the_tensor_that_changed_in_a_converted_directory(reference_dir, tmp_path):
    r = run_cli("verify", reference_dir)
    assert r.returncode == 0 and "match" in r.stdout, r.stderr
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in reference_dir.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    header_len = struct.unpack("<Q", (copy / "model.safetensors").read_bytes()[:8])[0]
    begin = json.loads((copy / "model.safetensors").read_bytes()[8:8 + header_len])["layers.2.feed_forward.w2.weight"]["data_offsets"][0]
    with open(copy / "model.safetensors", "r+b") as f:
        f.seek(8 + header_len + begin + 10)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 1]))
    assert_one_line_error(run_cli("verify", copy), "layers.2.feed_forward.w2.weight")


@pytest.fixture(scope="module")
def meta_download(tmp_path_factory):
    """A Meta-format download with the checklist.chk Meta ships (md5sum output)."""
    src = write_meta_checkpoint(tmp_path_factory.mktemp("meta") / "llama-2-tiny",
                                {"dim": 32, "n_layers": 1, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 40,
                                 "multiple_of": 16, "norm_eps": 1e-5}, random_meta_weights(32, 1, 4, 2, 40, 96))
    lines = [f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.name}" for p in sorted(src.iterdir())]
    (src / "checklist.chk").write_text("\n".join(lines) + "\n")
    return src


def test_verify_checks_a_meta_download_against_its_checklist(meta_download, tmp_path):
    r = run_cli("verify", meta_download)
    assert r.returncode == 0 and "2 files" in r.stdout, (r.stdout, r.stderr)
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in meta_download.iterdir():
        data = p.read_bytes()
        (bad / p.name).write_bytes(data[:-1] + bytes([data[-1] ^ 1]) if p.name == "consolidated.00.pth" else data)
    assert_one_line_error(run_cli("verify", bad), "consolidated.00.pth", "md5")
    assert_one_line_error(run_cli("convert", bad, tmp_path / "out"), "consolidated.00.pth", "md5")
    assert not (tmp_path / "out").exists()
    r = run_cli("convert", bad, tmp_path / "out2", "--no-verify")     # the damage is in the zip's tail
    assert r.returncode in (0, 2) and "md5" not in r.stderr


def test_generate_into_a_closed_pipe_exits_quietly(random_model_dir):
    proc = subprocess.Popen([sys.executable, "-m", "llama_np", "generate", str(random_model_dir), "--prompt",
                             "Once upon a time", "--max-new-tokens", "200", "--temperature", "0.8", "--seed", "1"],
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(20)
    proc.stdout.close()                                    # what `| head -c 20` does
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in err and "error" not in err.lower() and "Exception" not in err, err
    assert proc.returncode == 0


def test_ctrl_c_during_generation_stops_and_still_prints_the_summary(random_model_dir):
    proc = subprocess.Popen([sys.executable, "-m", "llama_np", "generate", str(random_model_dir), "--prompt",
                             "Once upon a time", "--temperature", "0.8", "--seed", "1"],
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.read(1)                                    # it is generating
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "new tokens" in err and "interrupted" in err, err


def test_chat_ends_cleanly_at_end_of_input(random_model_dir):
    r = run_cli("chat", random_model_dir, "--max-new-tokens", "4", input="")
    assert r.returncode == 0 and r.stderr == "", r.stderr
