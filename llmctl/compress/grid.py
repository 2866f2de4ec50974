"""Group-wise integer grids for weight-only quantization, and the integer result of one weight matrix.

Codes are signed, as compressed-tensors stores them (int4: -8..7; its pack-quantized writer adds the offset
when packing): a weight is (code - zero) · scale with one scale (and zero point when asymmetric) per output
row and group of input columns. Two symmetric grids, both as neural-compressor 3.10 computes them:
- "gptq": its GPTQ quantizer (and the GPTQ reference code): scale = 2·max|w| / (2^b - 1) with zero point
  2^(b-1), so +max|w| lands on (2^(b-1) - 1)·scale = 14/15·max|w| at 4 bits. llmctl's default
  (`gptq.rtn_grid=false`) and the grid the WikiText-2 35.39 of issue 16 was measured with.
- "rtn": its RTN (qdq_weight_sym): scale = max|w| / (2^(b-1) - 1), ±max|w| exactly representable.
Asymmetric grids are the same in both: scale = (max - min) / (2^b - 1), zero = round(-min / scale), with min
and max taken over the group and 0 (so 0 is always on the grid).

Examples:
    q = quantize_rtn(W, bits=4, group_size=128)                # QuantizedWeight
    torch.equal(q.dequantize(), fake_quantize(W, 4, 128))      # same numbers, float
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmctl.errors import LlmctlError

GRIDS = ("gptq", "rtn")


@dataclass
class QuantizedWeight:
    """Integer codes of one [rows, cols] weight and what dequantizes them, in compressed-tensors' terms.

    codes: int8 [rows, cols] in [-2^(b-1), 2^(b-1) - 1], original column order.
    scales: float32 [rows, groups]; zeros: int8 [rows, groups] (same signed range) or None when symmetric.
    g_idx: int32 [cols], the group of each column, when act-order formed the groups in another column order
    (compressed-tensors' `weight_g_idx`, actorder "group"); None when column j is in group j // group_size.
    group_size: columns per group as asked (-1 = one group per row); the last group may be shorter.

    Examples:
        W = q.dequantize()                       # float32 [rows, cols]
        q.group_index()[:3]                      # tensor([0, 0, 0]) without act-order
    """

    codes: Any
    scales: Any
    zeros: Any
    g_idx: Any
    bits: int
    group_size: int

    @property
    def sym(self) -> bool:
        return self.zeros is None

    def group_index(self):
        """The group of each input column (g_idx, or column // group_size)."""
        import torch

        if self.g_idx is not None:
            return self.g_idx.long()
        cols = self.codes.shape[1]
        size = self.group_size if 0 < self.group_size < cols else cols
        return torch.arange(cols) // size

    def dequantize(self, dtype=None):
        """The float weight these codes stand for: (code - zero) · scale of the column's group."""
        import torch

        g = self.group_index()
        codes = self.codes.to(torch.float32)
        if self.zeros is not None:
            codes = codes - self.zeros.to(torch.float32)[:, g]
        out = codes * self.scales[:, g]
        return out if dtype is None else out.to(dtype)


def check_grid(bits: int, grid: str) -> None:
    if not 2 <= bits <= 8:
        raise LlmctlError(f"{bits}-bit weights are not supported here", hint="use 2 to 8 bits")
    if grid not in GRIDS:
        raise LlmctlError(f"unknown grid {grid!r}", hint=f"use one of {', '.join(GRIDS)}")


def group_spans(cols: int, group_size: int) -> list[tuple[int, int]]:
    """Column ranges sharing a scale, as neural-compressor's quant_tensor splits them (a short tail is its own group).

    Examples:
        group_spans(576, 128)   # [(0, 128), (128, 256), (256, 384), (384, 512), (512, 576)]
    """
    g = group_size if 0 < group_size <= cols else cols
    return [(a, min(a + g, cols)) for a in range(0, cols, g)]


def grid_params(x, bits: int, sym: bool, grid: str = "gptq"):
    """Per-row (scale, zero) of the grid for x [rows, n]; zero is the signed zero point (0 when symmetric).

    Zero-only rows get the grid of [-1, 1], as neural-compressor does.
    """
    import torch

    maxq = 2**bits - 1
    half = 2 ** (bits - 1)
    lo, hi = torch.aminmax(x, dim=1)
    if sym and grid == "rtn":
        wmax = torch.maximum(hi.abs(), lo.abs())
        wmax = torch.where(wmax == 0, torch.ones_like(wmax), wmax)
        return wmax / (half - 1), torch.zeros_like(wmax)
    xmin = lo.clamp(max=0)
    xmax = hi.clamp(min=0)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)  # an all-positive group keeps min 0 (the reference's quirk)
    empty = (xmin == 0) & (xmax == 0)
    xmin = torch.where(empty, -torch.ones_like(xmin), xmin)
    xmax = torch.where(empty, torch.ones_like(xmax), xmax)
    scale = (xmax - xmin) / maxq
    zero = torch.zeros_like(scale) if sym else torch.round(-xmin / scale) - half
    return scale, zero


def quantize_codes(x, scale, zero, bits: int):
    """Signed codes of x [rows, n] on per-row grids (scale, zero: [rows] or [rows, 1])."""
    import torch

    half = 2 ** (bits - 1)
    scale = scale.reshape(-1, 1)
    zero = zero.reshape(-1, 1)
    return torch.clamp(torch.round(x / scale) + zero, -half, half - 1)


def fake_quantize(W, bits: int = 4, group_size: int = 128, sym: bool = True, grid: str = "rtn"):
    """W rounded to its group-wise grid and back to float (quantize_rtn(...).dequantize() without the codes).

    Examples:
        err = (fake_quantize(W * s) / s - W)     # AWQ's candidate scales
    """
    import torch

    W = W.float()
    out = torch.empty_like(W)
    for a, b in group_spans(W.shape[1], group_size):
        scale, zero = grid_params(W[:, a:b], bits, sym, grid)
        codes = quantize_codes(W[:, a:b], scale, zero, bits)
        out[:, a:b] = (codes - zero.reshape(-1, 1)) * scale.reshape(-1, 1)
    return out


def quantize_rtn(W, bits: int = 4, group_size: int = 128, sym: bool = True, grid: str = "rtn") -> QuantizedWeight:
    """Round-to-nearest of one [rows, cols] weight, group by group (neural-compressor RTN's numbers).

    Examples:
        q = quantize_rtn(linear.weight.data, bits=4, group_size=128)
    """
    import torch

    check_grid(bits, grid)
    W = W.float()
    codes = torch.empty(W.shape, dtype=torch.int8)
    scales, zeros = [], []
    for a, b in group_spans(W.shape[1], group_size):
        scale, zero = grid_params(W[:, a:b], bits, sym, grid)
        codes[:, a:b] = quantize_codes(W[:, a:b], scale, zero, bits).to(torch.int8)
        scales.append(scale)
        zeros.append(zero)
    return QuantizedWeight(
        codes=codes,
        scales=torch.stack(scales, dim=1),
        zeros=None if sym else torch.stack(zeros, dim=1).to(torch.int8),
        g_idx=None,
        bits=bits,
        group_size=group_size,
    )
