"""Mixed-task masked linear: each row of a batch through its own task's binary weight mask.

``y[r] = x[r] @ (W * M[row_task[r]])^T + b`` with the masks ``M`` (T, N, K) stored bit-packed as
int32 (T, N, ceil(K / 32)): bit ``j`` of word ``w`` is element ``32 * w + j`` (little-endian
within the word; bit 31 is the sign bit of the int32).

* :func:`pack_masks` / :func:`unpack_masks`: plain-torch (un)packing.
* :func:`masked_linear_reference`: plain torch, one matmul per distinct task; any device.
* :func:`masked_linear_triton`: one Triton launch for the whole mixed batch (forward only;
  wrapped in an autograd function whose backward is plain torch by :func:`masked_linear`).
* :func:`masked_linear`: the dispatcher (Triton on CUDA when importable, else the reference).

``x`` may be (R, K) or (B, ..., K). ``row_task`` is either one task per row (shape
``x.shape[:-1]``) or one task per sample (shape ``(B,)``), which is expanded over the other
leading dimensions.

Triton kernel design: the wrapper sorts rows by task (stable argsort), cuts every task's run of
rows into tiles of at most ``block_m`` rows that never cross a task boundary (on the device, no
host sync), and launches one grid over (tiles, N / block_n). A program loads its x tile
(block_m x block_k), the weight tile (block_n x block_k) and the block_k / 32 packed mask words
of each of its weight rows for its task, splits them into bits (``(word >> bit) & 1``), zeroes
the masked weights, accumulates ``tl.dot`` in fp32 over K, adds the bias and stores to the
sorted output rows, which the wrapper un-permutes. Triton is imported only when the kernel is
first used, so this module imports without it.
"""

from __future__ import annotations

import functools

import torch

WORD_BITS = 32
# tile of one program and its warps (bench/harmodt_batched_inference.py --tiles compares others)
TILE = {"block_m": 64, "block_n": 128, "block_k": 32, "num_warps": 4}


# ------------------------------------------------------------------------------------ packing
def pack_masks(masks: torch.Tensor) -> torch.Tensor:
    """Bool (T, N, K) -> int32 (T, N, ceil(K / 32)); bit j of word w is element 32 w + j."""
    if masks.dim() != 3:
        raise ValueError(f"masks must be (T, N, K); got shape {tuple(masks.shape)}")
    t, n, k = masks.shape
    words = -(-k // WORD_BITS)
    bits = torch.zeros(t, n, words * WORD_BITS, dtype=torch.int64, device=masks.device)
    bits[..., :k] = masks.to(torch.int64)
    weights = torch.ones(WORD_BITS, dtype=torch.int64, device=masks.device) << torch.arange(
        WORD_BITS, device=masks.device)
    packed = (bits.view(t, n, words, WORD_BITS) * weights).sum(-1)  # in [0, 2^32)
    packed = torch.where(packed >= 2**31, packed - 2**32, packed)  # two's complement int32
    return packed.to(torch.int32)


def unpack_masks(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Int32 (T, N, W) -> bool (T, N, k), the inverse of :func:`pack_masks`."""
    if packed.dim() != 3 or packed.shape[-1] * WORD_BITS < k:
        raise ValueError(f"packed (T, N, W) with 32 W >= {k} expected; got {tuple(packed.shape)}")
    shifts = torch.arange(WORD_BITS, dtype=torch.int32, device=packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1  # arithmetic shift: & 1 still gives bit 31
    return bits.flatten(-2)[..., :k].bool()


# ----------------------------------------------------------------------------------- helpers
def _flatten(x: torch.Tensor, row_task: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, ..., K) x and per-row or per-sample tasks -> (R, K) rows and (R,) tasks."""
    if x.dim() < 2:
        raise ValueError(f"x must be (R, K) or (B, ..., K); got shape {tuple(x.shape)}")
    lead = x.shape[:-1]
    row_task = torch.as_tensor(row_task, device=x.device)
    if row_task.shape != lead:
        if row_task.dim() != 1 or row_task.shape[0] != lead[0]:
            raise ValueError(f"row_task must have shape {tuple(lead)} or ({lead[0]},); "
                             f"got {tuple(row_task.shape)}")
        row_task = row_task.view(-1, *([1] * (len(lead) - 1))).expand(lead)
    return x.reshape(-1, x.shape[-1]), row_task.reshape(-1).long()


def _check(weight: torch.Tensor, packed: torch.Tensor, k: int) -> None:
    n = weight.shape[0]
    if weight.shape[1] != k:
        raise ValueError(f"weight is {tuple(weight.shape)} but x has {k} features")
    if packed.dim() != 3 or packed.shape[1] != n or packed.shape[2] != -(-k // WORD_BITS):
        raise ValueError(f"packed masks must be (T, {n}, {-(-k // WORD_BITS)}); got {tuple(packed.shape)}")


# --------------------------------------------------------------------------------- reference
def masked_linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                            packed: torch.Tensor, row_task: torch.Tensor) -> torch.Tensor:
    """Plain torch: rows of each distinct task times ``(W * M[task])^T`` plus ``bias``."""
    lead = x.shape[:-1]
    k = x.shape[-1]
    _check(weight, packed, k)
    flat, task = _flatten(x, row_task)
    y = flat.new_empty(flat.shape[0], weight.shape[0])
    for t in torch.unique(task).tolist():
        rows = (task == t).nonzero().squeeze(1)
        w = weight * unpack_masks(packed[t:t + 1], k)[0].to(weight.dtype)
        y = y.index_copy(0, rows, torch.nn.functional.linear(flat[rows], w, bias))
    return y.reshape(*lead, weight.shape[0])


# ------------------------------------------------------------------------------------ triton
@functools.cache
def _triton_kernel():
    """Import Triton and define the kernel (once); raises ImportError without Triton."""
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(x_ptr, w_ptr, b_ptr, p_ptr, y_ptr, tile_task_ptr, tile_start_ptr, tile_end_ptr,
               N, K, W_WORDS,
               stride_xm, stride_xk, stride_wn, stride_wk, stride_pt, stride_pn, stride_ym, stride_yn,
               HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_K: tl.constexpr):
        pid_t = tl.program_id(0)
        pid_n = tl.program_id(1)
        task = tl.load(tile_task_ptr + pid_t).to(tl.int64)
        row_start = tl.load(tile_start_ptr + pid_t)
        row_end = tl.load(tile_end_ptr + pid_t)

        offs_m = row_start + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        m_ok = offs_m < row_end
        n_ok = offs_n < N
        p_task = p_ptr + task * stride_pt

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < K
            x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                        mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            nk_ok = n_ok[:, None] & k_ok[None, :]
            w = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :] * stride_wk,
                        mask=nk_ok, other=0.0)
            # the BLOCK_K / 32 mask words of each weight row, loaded once and split into bits
            offs_w = k0 // 32 + tl.arange(0, BLOCK_K // 32)
            words = tl.load(p_task + offs_n[:, None] * stride_pn + offs_w[None, :],
                            mask=n_ok[:, None] & (offs_w[None, :] < W_WORDS), other=0)
            bits = (words[:, :, None] >> tl.arange(0, 32)[None, None, :]) & 1
            keep = tl.reshape(bits, (BLOCK_N, BLOCK_K)) != 0
            w = tl.where(keep, w, tl.zeros_like(w))
            acc += tl.dot(x, tl.trans(w), out_dtype=tl.float32)

        if HAS_BIAS:
            b = tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
            acc += b[None, :]
        y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])

    return triton, kernel


def triton_available() -> bool:
    """Whether Triton can be imported (the kernel can then run on CUDA or in its interpreter)."""
    try:
        _triton_kernel()
    except ImportError:
        return False
    return True


def _row_tiles(sorted_task: torch.Tensor, num_tasks: int, block_m: int) -> tuple[torch.Tensor, ...]:
    """(task, row_start, row_end) of tiles of <= block_m sorted rows that never cross a task.

    Computed on the rows' device without a host sync: there are ``cdiv(R, block_m) + num_tasks``
    tiles (an upper bound), and those past the last real tile are empty (start == end == 0).
    """
    device = sorted_task.device
    counts = torch.zeros(num_tasks, dtype=torch.long, device=device).index_add_(
        0, sorted_task, torch.ones_like(sorted_task))
    starts = torch.cumsum(counts, 0) - counts
    n_tiles = (counts + block_m - 1) // block_m
    tiles_end = torch.cumsum(n_tiles, 0)  # index after each task's last tile
    j = torch.arange(-(-sorted_task.shape[0] // block_m) + num_tasks, device=device)
    seg = torch.searchsorted(tiles_end, j, right=True).clamp_max(num_tasks - 1)
    tile_start = starts[seg] + (j - tiles_end[seg] + n_tiles[seg]) * block_m
    tile_end = torch.minimum(tile_start + block_m, starts[seg] + counts[seg])
    real = j < tiles_end[-1]
    return (seg.to(torch.int32), torch.where(real, tile_start, 0).to(torch.int32),
            torch.where(real, tile_end, 0).to(torch.int32))


def masked_linear_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         packed: torch.Tensor, row_task: torch.Tensor, *, block_m: int | None = None,
                         block_n: int | None = None, block_k: int | None = None,
                         num_warps: int | None = None) -> torch.Tensor:
    """One Triton launch for a batch mixing tasks (forward only; no autograd; no host sync).

    Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``. fp32/fp16/bf16 inputs;
    fp32 accumulation; output in ``x.dtype``. ``weight`` and ``bias`` are cast to ``x.dtype``.
    Tile sizes and warps not given come from ``TILE``.
    """
    block_m = block_m or TILE["block_m"]
    block_n = block_n or TILE["block_n"]
    block_k = block_k or TILE["block_k"]
    num_warps = num_warps or TILE["num_warps"]
    if block_k % WORD_BITS:
        raise ValueError(f"block_k must be a multiple of {WORD_BITS} (whole mask words); got {block_k}")
    triton, kernel = _triton_kernel()
    lead = x.shape[:-1]
    k = x.shape[-1]
    n = weight.shape[0]
    _check(weight, packed, k)
    flat, task = _flatten(x, row_task)
    r = flat.shape[0]
    y_sorted = flat.new_empty(r, n)
    if r == 0 or n == 0:
        return y_sorted.reshape(*lead, n)
    order = torch.argsort(task, stable=True)
    x_sorted = flat.index_select(0, order).contiguous()
    weight = weight.to(flat.dtype).contiguous()
    packed = packed.to(device=flat.device, dtype=torch.int32).contiguous()
    tile_task, tile_start, tile_end = _row_tiles(task[order], packed.shape[0], block_m)
    has_bias = bias is not None
    b = bias.to(flat.dtype).contiguous() if has_bias else weight  # dummy pointer when no bias
    grid = (tile_task.shape[0], triton.cdiv(n, block_n))
    kernel[grid](x_sorted, weight, b, packed, y_sorted, tile_task, tile_start, tile_end,
                 n, k, packed.shape[2],
                 x_sorted.stride(0), x_sorted.stride(1), weight.stride(0), weight.stride(1),
                 packed.stride(0), packed.stride(1), y_sorted.stride(0), y_sorted.stride(1),
                 HAS_BIAS=has_bias, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                 num_warps=num_warps)
    y = torch.empty_like(y_sorted)
    y[order] = y_sorted
    return y.reshape(*lead, n)


# -------------------------------------------------------------------------- autograd + dispatch
class _TritonMaskedLinear(torch.autograd.Function):
    """Triton forward; plain-torch backward (one pair of matmuls per distinct task)."""

    @staticmethod
    def forward(ctx, x, weight, bias, packed, task):  # x (R, K), task (R,)
        ctx.save_for_backward(x, weight, packed, task)
        ctx.has_bias = bias is not None
        return masked_linear_triton(x, weight, bias, packed, task)

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, packed, task = ctx.saved_tensors
        k = x.shape[1]
        grad_x = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        for t in torch.unique(task).tolist():
            rows = (task == t).nonzero().squeeze(1)
            m = unpack_masks(packed[t:t + 1], k)[0].to(weight.dtype)
            g = grad_y.index_select(0, rows)
            if grad_x is not None:
                grad_x.index_copy_(0, rows, (g @ (weight * m).to(g.dtype)).to(x.dtype))
            if grad_w is not None:
                grad_w += (g.t() @ x.index_select(0, rows)).to(weight.dtype) * m
        grad_b = grad_y.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None, None


def masked_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  packed: torch.Tensor, row_task: torch.Tensor) -> torch.Tensor:
    """``x (B, ..., K)`` through per-row task masks: Triton on CUDA when available, else torch.

    Differentiable either way (the Triton path has a plain-torch backward).
    """
    if not (x.is_cuda and triton_available()):
        return masked_linear_reference(x, weight, bias, packed, row_task)
    lead = x.shape[:-1]
    k = x.shape[-1]
    _check(weight, packed, k)
    flat, task = _flatten(x, row_task)
    y = _TritonMaskedLinear.apply(flat, weight, bias, packed, task)
    return y.reshape(*lead, weight.shape[0])
