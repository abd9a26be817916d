"""Per-row prediction / confidence / top-k of classifier or LM logits, for sample logging.

The eager way, `logits.float().softmax(-1).max(-1)`, reads the logits, writes a full-size probability
tensor and reads it again; for an LM batch (8 x 2048 x 50257 bf16) that is ~5 GB of traffic to log a few
numbers. The kernel reads every logit once with an online softmax (running max + running sum of
exp(x - max)), so argmax, top-1 probability (= 1 / sum(exp(x - max))) and log-sum-exp fall out of one
pass over V, which may be as large as 256k (looped in blocks). Everything accumulates in fp32.

Top-k for k > 1 uses `torch.topk` (plus a tie fix-up so that equal values list the lowest index first,
see `_topk_rows`) and the kernel's log-sum-exp (p_i = exp(x_i - lse)): a k-way selection inside the kernel would
complicate it for a rarely-used path. Nothing here reads device data back to the host.

`-inf` is a valid logit (a masked or padded vocabulary entry): it gets probability 0 and never wins the
argmax. A row holding a NaN or `+inf`, or with no logit above `-inf` at all (no softmax exists), is
reported, never raised on: finite=False, prediction=-1, confidence=NaN, top-k indices -1 and
probabilities NaN.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._dispatch import HAS_TRITON, tl, triton, use_triton

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# Columns per loop step, warps per row and pipeline stages; re-tune with "logits_tuning" in
# benchmarks/gpu_kernels_check.py. H200, 8x2048x50257 bf16: 512/4 warps 2.3 TB/s, 1024/4 1.9, 4096/8 1.2
# (small blocks keep more rows in flight per SM); num_stages made no difference.
_BLOCK_V, _NUM_WARPS, _NUM_STAGES = 512, 4, None
_TOPK_CHUNK_ELEMENTS = 1 << 24  # logits per top-k chunk: a few hundred MB of temporaries


class LogitsSummary(NamedTuple):
    prediction: torch.Tensor  # int64 [...], argmax (ties -> lowest index), -1 for non-finite rows
    confidence: torch.Tensor  # float32 [...], top-1 softmax probability
    topk_indices: torch.Tensor  # int64 [..., k]
    topk_probs: torch.Tensor  # float32 [..., k]
    finite: torch.Tensor  # bool [...], False when the row holds a NaN or +inf, or is all -inf


def logits_summary(logits: torch.Tensor, *, k: int = 1, impl: str = "auto") -> LogitsSummary:
    """Summarise ``[N, C]`` or ``[N, T, V]`` logits row by row (over the last dim).

    Result tensors have the leading shape ``[N]`` / ``[N, T]``. ``impl``: "auto" (Triton on CUDA when
    available, torch otherwise), "triton" or "torch".
    """
    _validate(logits, k)
    if use_triton(impl, logits):
        prediction, confidence, lse, finite = _summary_triton(logits)
    else:
        prediction, confidence, lse, finite = _summary_torch(logits)
    return _with_topk(logits, k, prediction, confidence, lse, finite)


def logits_summary_reference(logits: torch.Tensor, *, k: int = 1) -> LogitsSummary:
    """The pure-torch reference of :func:`logits_summary`."""
    return logits_summary(logits, k=k, impl="torch")


def _validate(logits, k) -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits: expected a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() not in (2, 3):
        raise ValueError(f"logits: expected a 2-D [N, C] or 3-D [N, T, V] tensor, got shape {tuple(logits.shape)}")
    if logits.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"logits: expected a floating dtype (float32, float16 or bfloat16), got {logits.dtype}")
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k: expected an int, got {type(k).__name__}")
    n_classes = logits.shape[-1]
    if not 1 <= k <= n_classes:
        raise ValueError(f"k: expected 1 <= k <= {n_classes} (the last dim of logits), got {k}")


def _summary_torch(logits: torch.Tensor):
    x = logits.float()
    m, prediction = x.max(-1)  # index of the first maximum, like torch.argmax; NaN propagates
    finite = torch.isfinite(m)  # NaN and +inf show in the max, and so does a row of nothing but -inf
    # softmax at the argmax is exp(0) / sum(exp(x - m)): the kernel's 1 / sum, with torch's summation.
    confidence = torch.softmax(x, -1).gather(-1, prediction[..., None]).squeeze(-1)
    lse = m - torch.log(confidence)
    confidence = torch.where(finite, confidence, float("nan"))
    lse = torch.where(finite, lse, float("nan"))
    return torch.where(finite, prediction, -1), confidence, lse, finite


def _with_topk(logits, k, prediction, confidence, lse, finite) -> LogitsSummary:
    if k == 1:
        return LogitsSummary(prediction, confidence, prediction[..., None], confidence[..., None], finite)
    indices = _topk_indices(logits, k)
    probs = torch.exp(logits.gather(-1, indices).float() - lse[..., None])
    row_ok = finite[..., None]
    indices = torch.where(row_ok, indices, -1)
    probs = torch.where(row_ok, probs, float("nan"))
    return LogitsSummary(prediction, confidence, indices, probs, finite)


def _topk_indices(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest logits per row, ordered by (value desc, index asc), without a host sync.

    Rows are processed in chunks to bound the temporaries' memory.
    """
    n_cols = logits.shape[-1]
    rows = logits.reshape(-1, n_cols)
    out = torch.empty((rows.shape[0], k), dtype=torch.int64, device=logits.device)
    step = max(1, _TOPK_CHUNK_ELEMENTS // n_cols)
    for start in range(0, rows.shape[0], step):
        out[start : start + step] = _topk_rows(rows[start : start + step], k)
    return out.view(*logits.shape[:-1], k)


def _topk_rows(x: torch.Tensor, k: int) -> torch.Tensor:
    # torch.topk picks arbitrary members of a tie (an all-zero row may give [2, 3, 4]). Everything
    # above the k-th value is certainly in; among the values equal to it, a second top-k over
    # "tied ? n_cols - index : 0" finds the lowest indices. Both steps are data-independent (no sync).
    values, indices = x.topk(k, dim=-1)
    indices, order = indices.sort(dim=-1)  # candidates by (value desc, index asc)
    values, order = values.gather(-1, order).sort(dim=-1, descending=True, stable=True)
    indices = indices.gather(-1, order)
    kth = values[:, -1:]
    n_above = (values > kth).sum(-1, keepdim=True)
    n_cols = x.shape[-1]
    cols = torch.arange(n_cols, device=x.device, dtype=torch.int32)
    tied = n_cols - torch.where(x == kth, n_cols - cols, 0).topk(k, dim=-1).values.long()
    tied.clamp_(max=n_cols - 1)  # only a NaN k-th value (a non-finite row, discarded later) matches nothing
    slot = torch.arange(k, device=x.device)
    return torch.where(slot < n_above, indices, tied.gather(-1, (slot - n_above).clamp_min(0)))


def _summary_triton(logits: torch.Tensor):
    if logits.dim() == 2:
        n_rows, n_cols = logits.shape
        n_t, (stride_n, stride_v), stride_t = 1, logits.stride(), 0
    else:
        n, n_t, n_cols = logits.shape
        n_rows = n * n_t
        stride_n, stride_t, stride_v = logits.stride()
    lead = logits.shape[:-1]
    device = logits.device
    prediction = torch.empty(lead, dtype=torch.int64, device=device)
    confidence = torch.empty(lead, dtype=torch.float32, device=device)
    lse = torch.empty(lead, dtype=torch.float32, device=device)
    finite = torch.empty(lead, dtype=torch.uint8, device=device)
    if n_rows > 0:
        block_v = min(triton.next_power_of_2(n_cols), _BLOCK_V)
        _logits_kernel[(n_rows,)](
            logits, prediction, confidence, lse, finite,
            n_t, n_cols, stride_n, stride_t, stride_v,
            BLOCK_V=block_v, num_warps=_NUM_WARPS,
            **({} if _NUM_STAGES is None else {"num_stages": _NUM_STAGES}),
        )  # fmt: skip
    return prediction, confidence, lse, finite.view(torch.bool)


if HAS_TRITON:

    @triton.jit
    def _logits_kernel(
        x_ptr, pred_ptr, conf_ptr, lse_ptr, finite_ptr,
        T, V, stride_n, stride_t, stride_v,
        BLOCK_V: tl.constexpr,
    ):  # fmt: skip
        # One program per row, and an online softmax per *lane*: lane j keeps the running max `m`, the
        # sum `s` of exp(x - m) and the first argmax over columns j, j + BLOCK_V, ...; lanes are merged
        # once after the loop, so the loop body has no cross-thread reduction to wait for.
        row = tl.program_id(0)
        base = x_ptr + (row // T).to(tl.int64) * stride_n + (row % T).to(tl.int64) * stride_t
        cols = tl.arange(0, BLOCK_V)
        m = tl.full([BLOCK_V], float("-inf"), tl.float32)
        s = tl.zeros([BLOCK_V], dtype=tl.float32)
        arg = tl.zeros([BLOCK_V], dtype=tl.int32)
        for start in range(0, V, BLOCK_V):
            offs = start + cols
            mask = offs < V
            x = tl.load(base + offs.to(tl.int64) * stride_v, mask=mask, other=float("-inf")).to(tl.float32)
            # -inf (a masked vocabulary entry, or padding past V) has probability 0: it leaves the lane
            # as it was. It must be skipped, not summed: exp(-|x - m|) is NaN while the lane's m is -inf.
            skip = x == float("-inf")
            bigger = x > m  # strict: a lane keeps its earliest maximum; never true for -inf or NaN
            # exp(-|x - m|) is the factor for whichever of (old sum, new term) is smaller: one exp.
            e = tl.exp(-tl.abs(x - m))
            # `x - x` is 0 for finite x and NaN for NaN/+inf: it poisons the lane, marking the row.
            s = tl.where(skip, s, tl.where(bigger, s * e + 1.0, s + e) + (x - x))
            arg = tl.where(bigger, offs, arg)
            m = tl.where(bigger, x, m)
        m_row = tl.max(m, axis=0)
        best = tl.min(tl.where(m == m_row, arg, V), axis=0)  # lowest column holding the maximum
        # A lane that saw only -inf has s = 0 and adds 0; a row of only -inf has m_row = -inf, and
        # exp(-inf - -inf) = NaN marks it like a NaN or +inf does.
        total = tl.sum(s * tl.exp(m - m_row), axis=0)
        ok = total == total  # total is NaN exactly when the row holds a NaN or +inf, or is all -inf
        tl.store(pred_ptr + row, tl.where(ok, best, -1).to(tl.int64))
        tl.store(conf_ptr + row, tl.where(ok, 1.0 / total, float("nan")))
        tl.store(lse_ptr + row, tl.where(ok, m_row + tl.log(total), float("nan")))
        tl.store(finite_ptr + row, ok.to(tl.uint8))
