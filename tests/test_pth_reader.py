"""Our torch-free .pth reader against torch.load itself: bit-identical arrays, and refusal of
anything in a pickle that is not a tensor."""
import collections
import pickle

import numpy as np
import pytest
import torch

from llama_np.checkpoints.pth import LazyTensor, load_pth
from llama_np.errors import LlamaNpError


def bits(a: np.ndarray) -> np.ndarray:
    """The raw bit patterns, so that -0.0, nan payloads and subnormals are compared exactly."""
    a = np.ascontiguousarray(a)
    return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.itemsize])


def torch_bits(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:  # our reader widens bf16 to float32 exactly; so does torch's .float()
        t = t.float()
    return bits(t.contiguous().numpy())


@pytest.fixture
def checkpoint(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 10, generator=g)
    special = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), 1e-40, 65504.0, -3.5])
    shared = torch.randn(8, 4, generator=g).to(torch.bfloat16)
    sd = collections.OrderedDict(
        bf16=torch.randn(5, 7, generator=g).to(torch.bfloat16),
        fp16=torch.randn(3, 4, 5, generator=g).half(),
        fp32=base,
        fp32_special=special,
        bf16_special=special.to(torch.bfloat16),
        transposed=base.t(),                         # non-contiguous view: strides (1, 10)
        column_slice=base[:, 3:7],                   # offset 3, row stride 10
        every_other=base[::2, 1::3],                 # step slicing
        shared_a=shared,                             # two tensors over one storage
        shared_b=shared[2:5],
        scalar=torch.tensor(2.5),
        param=torch.nn.Parameter(torch.ones(3)),
        int64=torch.arange(5),
    )
    path = tmp_path / "x.pth"
    torch.save(sd, path)
    return path, sd


def test_reader_returns_arrays_bit_identical_to_torch_load(checkpoint):
    path, _ = checkpoint
    ours = load_pth(path)
    theirs = torch.load(path, weights_only=True)
    assert list(ours) == list(theirs)
    for name, t in theirs.items():
        a = ours[name].numpy()
        assert a.shape == tuple(t.shape), name
        np.testing.assert_array_equal(bits(a), torch_bits(t.detach()), err_msg=name)


def test_reader_reports_torch_dtypes_and_shares_storages(checkpoint):
    path, _ = checkpoint
    ours = load_pth(path)
    assert {n: t.dtype for n, t in ours.items() if n in ("bf16", "fp16", "fp32")} == \
        {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
    assert ours["shared_a"].storage is ours["shared_b"].storage
    assert ours["shared_b"].offset == 2 * 4


def test_reader_does_not_read_tensor_data_until_asked(checkpoint):
    path, _ = checkpoint
    t = load_pth(path)["fp32"]
    assert isinstance(t, LazyTensor) and t.shape == (6, 10)


class Evil:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned > /tmp/llama_np_pwned",))


def test_pickle_asking_for_a_function_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.ones(2), "x": Evil()}, path)
    with pytest.raises(LlamaNpError, match="os.system|posix.system"):
        load_pth(path)


def test_truncated_file_is_an_error_not_a_crash(checkpoint, tmp_path):
    path, _ = checkpoint
    data = path.read_bytes()
    for cut in (len(data) // 3, len(data) - 200):
        bad = tmp_path / f"cut{cut}.pth"
        bad.write_bytes(data[:cut])
        with pytest.raises(LlamaNpError):
            sd = load_pth(bad)
            for t in sd.values():
                t.numpy()


def test_non_zip_file_is_an_error(tmp_path):
    bad = tmp_path / "old.pth"
    bad.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(LlamaNpError, match="not a PyTorch zip checkpoint"):
        load_pth(bad)
