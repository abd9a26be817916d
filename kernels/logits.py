"""Per-row prediction / confidence / top-k of classifier or LM logits, for sample logging.

The eager way, `logits.float().softmax(-1).max(-1)`, reads the logits, writes a full-size probability
tensor and reads it again; for an LM batch (8 x 2048 x 50257 bf16) that is ~5 GB of traffic to log a few
numbers. The kernel reads every logit once with an online softmax (running max + running sum of
exp(x - max)), so argmax, top-1 probability (= 1 / sum(exp(x - max))) and log-sum-exp fall out of one
pass over V, which may be as large as 256k (looped in blocks).

Top-k for k > 1 uses `torch.topk` on the raw logits plus the kernel's log-sum-exp
(p_i = exp(x_i - lse)): a k-way selection in the kernel would complicate it for a rarely-used path.
Among equal values, top-k lists the lowest index first; when more than k entries tie at the boundary,
which of them are kept is torch.topk's choice.

Rows containing NaN or +-inf are reported, never raised on: finite=False, prediction=-1,
confidence=NaN, top-k indices -1 and probabilities NaN.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._dispatch import HAS_TRITON, tl, triton, use_triton

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class LogitsSummary(NamedTuple):
    prediction: torch.Tensor  # int64 [...], argmax (ties -> lowest index), -1 for non-finite rows
    confidence: torch.Tensor  # float32 [...], top-1 softmax probability
    topk_indices: torch.Tensor  # int64 [..., k]
    topk_probs: torch.Tensor  # float32 [..., k]
    finite: torch.Tensor  # bool [...], False when the row holds a NaN or +-inf


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
        raise ValueError(
            f"logits: expected a 2-D [N, C] or 3-D [N, T, V] tensor, got shape {tuple(logits.shape)}"
        )
    if logits.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"logits: expected a floating dtype (float32, float16 or bfloat16), got {logits.dtype}"
        )
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k: expected an int, got {type(k).__name__}")
    n_classes = logits.shape[-1]
    if not 1 <= k <= n_classes:
        raise ValueError(f"k: expected 1 <= k <= {n_classes} (the last dim of logits), got {k}")


def _summary_torch(logits: torch.Tensor):
    x = logits.float()
    finite = torch.isfinite(x).all(-1)
    m = x.amax(-1, keepdim=True)
    s = torch.exp(x - m).sum(-1)
    prediction = torch.argmax(x, -1)
    nan = torch.tensor(float("nan"), device=x.device)
    confidence = torch.where(finite, 1.0 / s, nan)
    lse = torch.where(finite, m.squeeze(-1) + torch.log(s), nan)
    return torch.where(finite, prediction, -1), confidence, lse, finite


def _with_topk(logits, k, prediction, confidence, lse, finite) -> LogitsSummary:
    if k == 1:
        return LogitsSummary(prediction, confidence, prediction[..., None], confidence[..., None], finite)
    # topk on the native dtype: upcasting to fp32 is exact and monotonic, so it cannot change the order.
    values, indices = torch.topk(logits, k, dim=-1)
    # torch.topk picks arbitrary members of a tie at the k-th value (e.g. [2, 3, 4] for an all-zero
    # row). Rows where such a tie straddles the cut are rare, so only they pay for a stable full sort.
    kth = values[..., -1:]
    straddles = (logits == kth).sum(-1) > (values == kth).sum(-1)
    if straddles.any():
        tied_values, tied_indices = logits[straddles].sort(dim=-1, descending=True, stable=True)
        values[straddles], indices[straddles] = tied_values[:, :k], tied_indices[:, :k]
    # Lowest index first among equal values: sort by index, then stable-sort by value.
    indices, order = indices.sort(dim=-1)
    values, order = values.gather(-1, order).sort(dim=-1, descending=True, stable=True)
    indices = indices.gather(-1, order)
    probs = torch.exp(values.float() - lse[..., None])
    row_ok = finite[..., None]
    indices = torch.where(row_ok, indices, -1)
    probs = torch.where(row_ok, probs, torch.tensor(float("nan"), device=probs.device))
    return LogitsSummary(prediction, confidence, indices, probs, finite)


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
        block_v = min(triton.next_power_of_2(n_cols), 4096)
        _logits_kernel[(n_rows,)](
            logits, prediction, confidence, lse, finite,
            n_t, n_cols, stride_n, stride_t, stride_v,
            BLOCK_V=block_v, num_warps=8 if block_v >= 2048 else 4,
        )  # fmt: skip
    return prediction, confidence, lse, finite.view(torch.bool)


if HAS_TRITON:

    @triton.jit
    def _logits_kernel(
        x_ptr, pred_ptr, conf_ptr, lse_ptr, finite_ptr,
        T, V, stride_n, stride_t, stride_v,
        BLOCK_V: tl.constexpr,
    ):  # fmt: skip
        # One program per row. Only the running max `m` is reduced per block (it rescales the sum);
        # the sum of exp and the non-finite flag stay per-lane and are reduced once at the end.
        row = tl.program_id(0)
        base = x_ptr + (row // T).to(tl.int64) * stride_n + (row % T).to(tl.int64) * stride_t
        cols = tl.arange(0, BLOCK_V)
        m = float("-inf")
        best = 0
        sum_exp = tl.zeros([BLOCK_V], dtype=tl.float32)
        bad = tl.zeros([BLOCK_V], dtype=tl.int32)
        for start in range(0, V, BLOCK_V):
            offs = start + cols
            mask = offs < V
            x = tl.load(base + offs.to(tl.int64) * stride_v, mask=mask, other=float("-inf")).to(tl.float32)
            bad |= (mask & ((x != x) | (tl.abs(x) == float("inf")))).to(tl.int32)
            block_max, block_arg = tl.max(x, axis=0, return_indices=True, return_indices_tie_break_left=True)
            # Strict '>': an equal max in a later block keeps the earlier (lower) index.
            best = tl.where(block_max >= m, start + block_arg, best)
            m_new = tl.maximum(m, block_max)
            # exp(-inf) = 0 rescales the empty initial sum; NaNs here only arise in non-finite rows.
            sum_exp = sum_exp * tl.exp(m - m_new) + tl.exp(x - m_new)
            m = m_new
        total = tl.sum(sum_exp, axis=0)
        ok = tl.max(bad, axis=0) == 0
        tl.store(pred_ptr + row, tl.where(ok, best, -1).to(tl.int64))
        tl.store(conf_ptr + row, tl.where(ok, 1.0 / total, float("nan")))
        tl.store(lse_ptr + row, tl.where(ok, m + tl.log(total), float("nan")))
        tl.store(finite_ptr + row, ok.to(tl.uint8))
