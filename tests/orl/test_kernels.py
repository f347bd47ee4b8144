import os

import pytest
import torch
import torch.nn.functional as F

from orl.kernels import masked_linear, masked_linear_reference, pack_masks, unpack_masks
from orl.model.layers import OrlLinear, Route

if not torch.cuda.is_available():  # before orl.kernels imports triton: the tests run on CPU
    os.environ["TRITON_INTERPRET"] = "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # where the kernel tests run
TOL = 1e-4 if DEVICE == "cpu" else 1e-2  # fp32 tl.dot runs in TF32 on a GPU


def problem(r, n, k, tasks, seed=0, dtype=torch.float32, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(r, k, generator=g)
    w = torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g)
    masks = torch.rand(tasks, n, k, generator=g) > 0.4
    cast = lambda t: t.to(device=device, dtype=dtype)
    return cast(x), cast(w), cast(b), masks.to(device)


def per_row(x, w, b, masks, task):
    rows = [x[i] @ (w * masks[task[i]]).T + (0 if b is None else b) for i in range(x.shape[0])]
    return torch.stack(rows)


# ------------------------------------------------------------------------------------ packing
@pytest.mark.parametrize("k", [1, 31, 32, 33, 70, 96])
def test_pack_unpack_round_trip(k):
    masks = torch.rand(3, 5, k) > 0.5
    masks[0, 0, -1] = True  # the top bit of a full word is the int32 sign bit
    packed = pack_masks(masks)
    assert packed.dtype == torch.int32 and packed.shape == (3, 5, -(-k // 32))
    assert torch.equal(unpack_masks(packed, k), masks)


def test_pack_bit_order_is_little_endian():
    masks = torch.zeros(1, 1, 40, dtype=torch.bool)
    masks[0, 0, [0, 3, 31, 32, 39]] = True
    packed = pack_masks(masks)
    assert packed[0, 0, 0].item() == (1 | 1 << 3) - 2**31  # bit 31 set: negative int32
    assert packed[0, 0, 1].item() == 1 | 1 << 7


# ---------------------------------------------------------------------------------- reference
@pytest.mark.parametrize("with_bias", [True, False])
def test_reference_matches_per_row_loop(with_bias):
    x, w, b, masks = problem(23, 9, 45, tasks=4)
    b = b if with_bias else None
    task = torch.tensor([3, 0, 3, 1] * 5 + [0, 0, 3])  # task 2 absent
    out = masked_linear_reference(x, w, b, pack_masks(masks), task)
    torch.testing.assert_close(out, per_row(x, w, b, masks, task))


def test_reference_leading_dims_and_per_sample_tasks():
    x, w, b, masks = problem(12, 7, 10, tasks=3)
    x = x.view(4, 3, 10)
    task = torch.tensor([2, 0, 2, 1])
    packed = pack_masks(masks)
    out = masked_linear_reference(x, w, b, packed, task)  # (B,) task expanded over L
    assert out.shape == (4, 3, 7)
    per_token = masked_linear_reference(x, w, b, packed, task[:, None].expand(4, 3))
    torch.testing.assert_close(out, per_token)
    expected = per_row(x.view(12, 10), w, b, masks, task.repeat_interleave(3))
    torch.testing.assert_close(out.view(12, 7), expected)
    with pytest.raises(ValueError):
        masked_linear_reference(x, w, b, packed, torch.zeros(3, dtype=torch.long))


def test_reference_is_differentiable_and_dispatcher_uses_it_on_cpu():
    x, w, b, masks = problem(10, 6, 20, tasks=2)
    w.requires_grad_(True)
    task = torch.tensor([0, 1] * 5)
    masked_linear(x, w, b, pack_masks(masks), task).sum().backward()
    assert torch.all(w.grad[~(masks[0] | masks[1])] == 0)


# --------------------------------------------------------------------- triton (interpreter)
CASES = [  # (rows, N, K, tasks, task pattern)
    (37, 45, 70, 4, [0, 2, 3]),  # interleaved, task 1 absent, nothing a multiple of the blocks
    (16, 32, 32, 2, [1, 0]),  # exact blocks
    (5, 48, 64, 3, [2]),  # one task, fewer rows than BLOCK_M
    (40, 17, 33, 5, [4, 4, 4, 0, 1, 1, 3]),  # runs of rows crossing BLOCK_M within a task
]


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("case", CASES)
def test_triton_kernel_matches_reference_fp32(case, with_bias):
    pytest.importorskip("triton")
    from orl.kernels import masked_linear_triton

    r, n, k, tasks, pattern = case
    x, w, b, masks = problem(r, n, k, tasks)
    b = b if with_bias else None
    task = torch.tensor(pattern).repeat(-(-r // len(pattern)))[:r]
    packed = pack_masks(masks)
    out = masked_linear_triton(x, w, b, packed, task)
    torch.testing.assert_close(out, masked_linear_reference(x, w, b, packed, task), rtol=TOL, atol=TOL)


def test_triton_kernel_leading_dims_and_small_blocks():
    pytest.importorskip("triton")
    from orl.kernels import masked_linear_triton

    x, w, b, masks = problem(18, 20, 40, tasks=3)
    x = x.view(6, 3, 40)
    task = torch.tensor([1, 2, 1, 0, 0, 2])
    packed = pack_masks(masks)
    out = masked_linear_triton(x, w, b, packed, task, block_m=16, block_n=16, block_k=32)
    torch.testing.assert_close(out, masked_linear_reference(x, w, b, packed, task), rtol=TOL, atol=TOL)
    with pytest.raises(ValueError, match="block_k must be a multiple of 32"):
        masked_linear_triton(x, w, b, packed, task, block_k=16)


def test_triton_kernel_fp16_output_dtype():
    # bf16 tl.dot gives garbage under the interpreter (numpy has no bf16): bf16 is GPU-only below.
    pytest.importorskip("triton")
    from orl.kernels import masked_linear_triton

    x, w, b, masks = problem(21, 24, 40, tasks=3)
    task = torch.tensor([0, 1, 2]).repeat(7)
    packed = pack_masks(masks)
    out = masked_linear_triton(x.half(), w.half(), b.half(), packed, task)
    assert out.dtype == torch.float16
    ref = masked_linear_reference(x.half().float(), w.half().float(), b.half().float(), packed, task)
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=2e-2)


# ----------------------------------------------------------------------------------- GPU only
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_kernel_matches_reference(dtype):
    pytest.importorskip("triton")
    from orl.kernels import masked_linear_triton

    x, w, b, masks = problem(300, 200, 130, tasks=6, device="cuda", dtype=dtype)
    task = torch.randint(0, 5, (300,), generator=torch.Generator().manual_seed(1)).cuda()
    packed = pack_masks(masks)
    out = masked_linear_triton(x, w, b, packed, task)
    assert out.dtype == dtype
    ref = masked_linear_reference(x.float(), w.float(), b.float(), packed, task)
    tol = {torch.float32: 1e-2, torch.bfloat16: 1e-1, torch.float16: 3e-2}[dtype]  # TF32 in fp32 dots
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)


@cuda
def test_cuda_layer_uses_kernel_with_gradients():
    pytest.importorskip("triton")
    torch.manual_seed(0)
    lin = OrlLinear(70, 45).cuda()
    torch.nn.init.normal_(lin.bias)
    masks = torch.rand(3, 45, 70, device="cuda") > 0.4
    lin.set_masks(masks)
    x = torch.randn(6, 5, 70, device="cuda", requires_grad=True)
    task = torch.tensor([2, 0, 2, 1, 0, 2], device="cuda")
    out = lin(x, Route(mask=task))
    ref_w = lin.weight.detach().clone().requires_grad_(True)
    ref_x = x.detach().clone().requires_grad_(True)
    ref = torch.stack([F.linear(ref_x[i], ref_w * masks[task[i]], lin.bias) for i in range(6)])
    torch.testing.assert_close(out, ref, rtol=1e-2, atol=1e-2)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(lin.weight.grad, ref_w.grad, rtol=1e-2, atol=1e-2)
    assert lin.packed_masks() is lin.packed_masks()  # cached
    lin.set_masks(~masks)
    assert torch.equal(unpack_masks(lin.packed_masks(), 70), ~masks)  # invalidated


# -------------------------------------------------------------------------- layer (CPU side)
def test_layer_packed_masks_cache_invalidation():
    lin = OrlLinear(40, 6)
    masks = torch.rand(2, 6, 40) > 0.5
    lin.set_masks(masks)
    first = lin.packed_masks()
    assert lin.packed_masks() is first
    assert torch.equal(unpack_masks(first, 40), masks)
    lin.set_masks(~masks)
    assert torch.equal(unpack_masks(lin.packed_masks(), 40), ~masks)
    lin.masks[0].fill_(True)  # in-place edit
    assert torch.equal(unpack_masks(lin.packed_masks(), 40)[0], torch.ones(6, 40, dtype=torch.bool))
    lin.keep_inputs(torch.arange(33))
    assert lin.packed_masks().shape == (2, 6, 2)
