"""The stride fix: the backward of a strided convolution without its grid artifacts.

A stride-s transposed convolution writes only every s-th pixel of its output. The fix instead
upsamples the signal from the strided output size to the size a stride-1 convolution would
produce, then applies the stride-1 transposed convolution with the same weights and padding.

Strided output cell i is the stride-1 output at position s i, so that is where its signal
belongs. Two upsamplings (per axis, stride-1 position j, u the upsampled signal):

* ``"linear"`` (default): linear interpolation between the cells' positions,
  u[j] = (1 - t) g[q] + t g[q + 1] with q = floor(j / s), t = j / s - q (the last cell held
  beyond its position); the signal stays where the strided conv computed it;
* ``"nearest"`` (the authors' demo): u[j] = g[floor(j / s)], which moves every cell's signal
  (s - 1) / 2 positions down/right and leaves s x s blocks.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vebi.errors import VebiError
from vebi.explanation.rules import OpCall, Rule, as_pair

__all__ = ["UPSAMPLE_MODES", "StrideFixConv", "check_upsample", "stride_fix_kernel", "stride_fixed_conv_input_grad",
           "upsample_kernel"]

UPSAMPLE_MODES = ("linear", "nearest")


def check_upsample(mode: str) -> str:
    """``mode`` if it is one of :data:`UPSAMPLE_MODES`, else a VebiError."""
    if mode not in UPSAMPLE_MODES:
        raise VebiError(f"upsample must be one of {', '.join(UPSAMPLE_MODES)}, not {mode!r}")
    return mode


def upsample_kernel(s: int, mode: str) -> tuple[list[float], int]:
    """The 1-D upsampling as a stride-s transposed conv: taps and the offset of the first one.

    Cell i adds taps[u] g[i] at position s i + first + u: nearest a box of s ones at offset 0,
    linear the triangle (s - |m|) / s, m = -(s - 1) .. s - 1.
    """
    if check_upsample(mode) == "nearest":
        return [1.0] * s, 0
    return [(s - abs(m)) / s for m in range(-(s - 1), s)], -(s - 1)


def stride_fixed_conv_input_grad(
    g: Tensor, weight: Tensor, input_size: tuple[int, int],
    stride: Any, padding: Any, dilation: Any, groups: int, upsample: str = "linear",
) -> Tensor:
    """Backward of a strided conv with the stride fix.

    For input size H, kernel k, padding p, dilation d, stride s: the stride-1 output size is
    H1 = H + 2p - d(k - 1). The signal g (B, C_out, H_out, W_out) is upsampled to (H1, W1)
    (``upsample``, see the module docstring) and passed through the transposed conv with
    stride 1 and the same weights, padding, dilation and groups, which gives back (B, C_in, H, W).

    Four equal ways to compute it; :func:`_route` takes the fastest for the layer (CPU, measured):

    * ``"direct"``: exactly the definition. Depthwise convs take it (their stride-1 transposed
      conv is cheap, so nothing is gained by avoiding it), and so does a conv whose border bands
      (below) are wide for its size, H1 W1 <= H_out W_out + 3 (band positions): e.g. a 7 x 7 output
      (ResNet-50's ``layer4.0.conv2`` at 224 px), as each thin band's transposed conv reads the whole
      weight for a few rows;
    * ``"pointwise"`` (1 x 1 kernels without padding): a 1 x 1 conv acts on each position alone,
      so it commutes with the upsampling: the channel mix runs at the strided size, then the
      upsampling, with H1 = H;
    * ``"polyphase"`` (few input channels, e.g. an image-input layer, and a kernel shorter than
      three strides) and ``"transposed"`` (any other conv) avoid the full-resolution conv: either
      upsampling is a stride-s transposed conv with a small kernel u (:func:`upsample_kernel`;
      separable), so the two steps are one stride-s transposed conv with the kernel
      K = u * dilate_d(w). Polyphase: output phase (a, b) of a stride-s transposed conv with K is a
      stride-1 *forward* conv of g with the flipped sub-kernel K[a::s, b::s], so one conv2d with
      C_in s_h s_w outputs and a pixel shuffle give it (a backward-data conv that produces 3
      channels from a short kernel is slow on CPUs; from a kernel of three strides or more,
      ResNet's 7 x 7 stride-2 stem, it is not).
      Transposed: convolutions commute, so it is the plain transposed conv Y = conv_T_s(g, w)
      followed by the separable filter u at input resolution, gx[i] = sum_m u[m] Y[i + p - m].
      Both compute the transposed conv of the upsampling on the unbounded grid; where it differs
      from the upsampled signal on [0, H1) x [0, W1) (rows and columns at the borders: beyond
      H1, W1, and for linear before 0 and the last cell held) the difference is added through
      the stride-1 transposed conv: thin bands.
    """
    (sh, sw), (ph, pw), (dh, dw) = as_pair(stride), as_pair(padding), as_pair(dilation)
    (h, w), (kh, kw), (ho, wo) = input_size, weight.shape[-2:], g.shape[-2:]
    h1, w1 = h + 2 * ph - dh * (kh - 1), w + 2 * pw - dw * (kw - 1)
    (taps_h, first_h), (taps_w, first_w) = upsample_kernel(sh, upsample), upsample_kernel(sw, upsample)
    full_rows = (first_h, sh * (ho - 1) + first_h + len(taps_h))
    row_bands = _border_ranges(sh, ho, h1, upsample, first_h)
    col_bands = _border_ranges(sw, wo, w1, upsample, first_w)
    band_cells = (sum(b - a for a, b in row_bands) * w1
                  + sum(b - a for a, b in col_bands) * (full_rows[1] - full_rows[0]))
    route = _route(weight, (sh, sw), (ph, pw), groups, h1 * w1 <= ho * wo + _BAND_COST * band_cells)
    if route == "direct":
        up = _upsample(_upsample(g, -2, sh, upsample, h1), -1, sw, upsample, w1)
        return F.conv_transpose2d(up, weight, None, 1, (ph, pw), 0, groups, (dh, dw))
    if route == "pointwise":
        mixed = F.conv_transpose2d(g, weight, None, 1, 0, 0, groups)
        return _upsample(_upsample(mixed, -2, sh, upsample, h), -1, sw, upsample, w)
    if route == "polyphase":
        kernel = stride_fix_kernel(weight, (sh, sw), (dh, dw), upsample)
        gx = _polyphase_transposed_conv(g, kernel, (sh, sw))
        gx = gx.narrow(-2, ph - first_h, h).narrow(-1, pw - first_w, w)
    else:
        y = F.conv_transpose2d(g, weight, None, (sh, sw), 0, 0, groups, (dh, dw))
        gx = _separable_sum(y, (taps_h, first_h, ph, h), (taps_w, first_w, pw, w))
    conv = (weight, (ph, pw), (dh, dw), groups)
    for rows in row_bands:  # (exact rows) - (unbounded rows), exact columns
        band = _upsampled(g, -2, sh, upsample, rows, h1, minus_unbounded=True)
        _add_transposed(gx, _upsampled(band, -1, sw, upsample, (0, w1), w1), (rows[0], 0), *conv)
    for cols in col_bands:  # unbounded rows, (exact - unbounded) columns
        band = _upsampled(g, -1, sw, upsample, cols, w1, minus_unbounded=True)
        _add_transposed(gx, _upsampled(band, -2, sh, upsample, full_rows), (full_rows[0], cols[0]), *conv)
    return gx


_ROUTES = ("direct", "pointwise", "polyphase", "transposed")
_POLYPHASE_MAX_IN = 8  # input channels up to which the polyphase route can be the faster one (CPU, measured)
_POLYPHASE_MAX_SPAN = 3  # ... when the kernel spans fewer strides than this along an axis (CPU, measured)
_BAND_COST = 3  # a border band's position costs about this many strided cells: each thin band's transposed conv
# reads the whole weight for a few rows (CPU, measured)


def _route(weight: Tensor, stride: tuple[int, int], padding: tuple[int, int], groups: int, wide_bands: bool) -> str:
    """Which of :data:`_ROUTES` computes the fix fastest for a conv with this weight (C_out, C_in / groups, kh, kw);
    ``wide_bands``: the stride-1 grid has at most as many positions as the strided output has cells plus
    :data:`_BAND_COST` times the border bands' positions (the direct route's work against the others').

    Measured on a 2-core CPU (``benchmarks/bench_stride_fix.py``), batches 1 to 32, 1 and 2 threads."""
    if groups > 1 and weight.shape[1] == 1:
        return "direct"
    if tuple(weight.shape[-2:]) == (1, 1) and padding == (0, 0):
        return "pointwise"
    if wide_bands:
        return "direct"
    short = any(k < _POLYPHASE_MAX_SPAN * s for k, s in zip(weight.shape[-2:], stride))
    if groups == 1 and weight.shape[1] <= _POLYPHASE_MAX_IN and short:
        return "polyphase"
    return "transposed"


def _upsample(g: Tensor, dim: int, s: int, mode: str, length: int) -> Tensor:
    """The fix's upsampling of g by s along ``dim`` (negative) to ``length`` stride-1 positions:
    nearest u[j] = g[floor(j / s)]; linear u[s q + a] = (1 - a / s) g[q] + (a / s) g[q + 1], the last
    cell held beyond its position (``length`` <= s * cells in both cases)."""
    if s == 1:
        return g.narrow(dim, 0, length)
    if mode == "nearest":
        return g.repeat_interleave(s, dim).narrow(dim, 0, length)
    n = g.shape[dim]
    out = g.new_empty(*g.shape[:dim], n, s, *g.shape[dim:][1:])
    for a in range(s):  # phase a: out[q, a] = lerp(g[q], g[q + 1], a / s), the last cell held
        phase = out.select(dim, a)
        if a == 0:
            phase.copy_(g)
            continue
        torch.lerp(g.narrow(dim, 0, n - 1), g.narrow(dim, 1, n - 1), a / s, out=phase.narrow(dim, 0, n - 1))
        phase.narrow(dim, n - 1, 1).copy_(g.narrow(dim, n - 1, 1))
    return out.flatten(dim - 1, dim).narrow(dim, 0, length)


def stride_fix_kernel(weight: Tensor, stride: tuple[int, int], dilation: tuple[int, int],
                      upsample: str = "linear") -> Tensor:
    """K = u * dilate_d(w): the dilated kernel fully convolved with the separable upsampling kernel u."""
    (sh, sw), (dh, dw) = stride, dilation
    kh, kw = weight.shape[-2:]
    dilated = weight.new_zeros(*weight.shape[:2], dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    dilated[..., ::dh, ::dw] = weight
    u_h = weight.new_tensor(upsample_kernel(sh, upsample)[0])
    u_w = weight.new_tensor(upsample_kernel(sw, upsample)[0])
    box = F.conv_transpose2d(dilated.reshape(-1, 1, *dilated.shape[-2:]), torch.outer(u_h, u_w)[None, None])
    return box.reshape(*weight.shape[:2], *box.shape[-2:])


def _polyphase_transposed_conv(g: Tensor, kernel: Tensor, stride: tuple[int, int]) -> Tensor:
    """conv_T(g, kernel, stride) without padding or cropping, as a forward conv and a pixel shuffle.

    With i = s q + a: Z[i] = sum_m g[q - m] kernel[s m + a], a full convolution of g with the
    phase kernel kernel[a::s]; returns (B, C_in, (H_out + M_h - 1) s_h, (W_out + M_w - 1) s_w),
    M = ceil(L / s) phase taps, which covers the whole transposed-conv output.
    """
    (sh, sw), (co, ci, lh, lw) = stride, kernel.shape
    mh, mw = -(-lh // sh), -(-lw // sw)
    phases = F.pad(kernel, (0, mw * sw - lw, 0, mh * sh - lh)).reshape(co, ci, mh, sh, mw, sw)
    phases = phases.permute(1, 3, 5, 0, 2, 4).flip(-1, -2).reshape(ci * sh * sw, co, mh, mw)
    z = F.conv2d(g, phases, None, 1, (mh - 1, mw - 1))
    b, _, hq, wq = z.shape
    return z.view(b, ci, sh, sw, hq, wq).permute(0, 1, 4, 2, 5, 3).reshape(b, ci, hq * sh, wq * sw)


def _separable_sum(y: Tensor, rows: tuple[list[float], int, int, int], cols: tuple[list[float], int, int, int]) -> Tensor:
    """out[i, j] = sum_{u, v} a[u] b[v] y[p + i - f - u, q + j - g - v] for i < n, j < m, with
    ``rows`` = (a, f, p, n), ``cols`` = (b, g, q, m) and y zero outside its extent."""
    pads = []
    for (taps, first, start, n), size in ((cols, y.shape[-1]), (rows, y.shape[-2])):
        low = start - first - (len(taps) - 1)  # the smallest index read
        pads += [max(0, -low), max(0, start - first + n - size)]
    y = F.pad(y, pads) if any(pads) else y
    for (taps, first, start, n), dim, pad in ((rows, -2, pads[2]), (cols, -1, pads[0])):
        out = None
        for u, tap in enumerate(taps):
            part = y.narrow(dim, pad + start - first - u, n)
            if out is None:
                out = part.clone() if tap == 1 else part * tap
            else:
                out.add_(part, alpha=tap)
        y = out
    return y


def _border_ranges(s: int, cells: int, length: int, mode: str, first: int) -> list[tuple[int, int]]:
    """Stride-1 positions [start, stop) where the upsampling on the unbounded grid differs from the
    fix's on [0, length): before 0, and from the last cell's position (linear) or ``length`` on."""
    stop = max(s * (cells - 1) + first + len(upsample_kernel(s, mode)[0]), length)
    start = length if mode == "nearest" else s * (cells - 1) + 1
    return [(a, b) for a, b in ((first, 0), (start, stop)) if b > a]


def _upsampled(x: Tensor, dim: int, s: int, mode: str, positions: tuple[int, int], length: int | None = None,
               minus_unbounded: bool = False) -> Tensor:
    """x upsampled by s along ``dim`` (-2 or -1) at stride-1 positions [start, stop).

    ``length`` None: on the unbounded grid (cells outside x are zero); else the fix's
    upsampling to [0, length) (zero outside it; linear holds the last cell beyond its position);
    ``minus_unbounded``: that minus the unbounded grid's. Position j is sum_t w[t, j] x[cell[t, j]]
    with taps cached per layout: a border band is a few rows or columns, so building the taps op by
    op cost more than the band itself.
    """
    cells, weights = _upsampling_taps(x.shape[dim], s, mode, positions, length, minus_unbounded, x.dtype, x.device)
    picked = x.index_select(dim, cells.flatten()).unflatten(dim, tuple(cells.shape))
    return (picked * weights).sum(-2) if dim == -1 else (picked * weights[..., None]).sum(-3)


@functools.lru_cache(maxsize=256)
def _upsampling_taps(n: int, s: int, mode: str, positions: tuple[int, int], length: int | None,
                     minus_unbounded: bool, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """(cells, weights), both (taps, positions): the nonzero entries of each row of the (positions, n)
    matrix M with (M x)[j] = :func:`_upsampled`'s value at stride-1 position j."""
    j = torch.arange(*positions)
    q = torch.div(j, s, rounding_mode="floor")
    t = (j - s * q).to(torch.float64) / s
    taps = [(q, torch.ones_like(t))] if mode == "nearest" else [(q, 1 - t), (q + 1, t)]

    def matrix(bounded: bool) -> Tensor:
        m = torch.zeros(j.numel(), n, dtype=torch.float64)
        for cell, weight in taps:
            inside = (j >= 0) & (j < length) if bounded else (cell >= 0) & (cell < n)
            m.index_put_((torch.arange(j.numel()), cell.clamp(0, n - 1)), weight * inside, accumulate=True)
        return m

    m = matrix(length is not None)
    if minus_unbounded:
        m -= matrix(False)
    width = max(int((m != 0).sum(dim=1).max()), 1) if m.numel() else 1
    cells = m.abs().topk(min(width, n), dim=1).indices
    return cells.T.to(device), m.gather(1, cells).T.to(dtype=dtype, device=device)


def _add_transposed(gx: Tensor, patch: Tensor, origin: tuple[int, int], weight: Tensor, padding: tuple[int, int],
                    dilation: tuple[int, int], groups: int) -> None:
    """gx += the stride-1 transposed conv of ``patch`` lying at stride-1 position ``origin``, where it
    falls inside gx (stride-1 output position (a, b) reaches input rows a - p_h + d_h u)."""
    corr = F.conv_transpose2d(patch, weight, None, 1, 0, 0, groups, dilation)
    top, left = origin[0] - padding[0], origin[1] - padding[1]
    r0, r1 = max(top, 0), min(top + corr.shape[-2], gx.shape[-2])
    c0, c1 = max(left, 0), min(left + corr.shape[-1], gx.shape[-1])
    if r1 > r0 and c1 > c0:
        gx[..., r0:r1, c0:c1] += corr[..., r0 - top:r1 - top, c0 - left:c1 - left]


@dataclass(frozen=True)
class StrideFixConv(Rule):
    """Stride fix for convolutions with stride > 1 (any padding, dilation, groups).

    Input gradient: see :func:`stride_fixed_conv_input_grad`; ``upsample`` is ``"linear"``
    (default) or ``"nearest"`` (the authors' demo). Stride-1 convolutions keep the plain backward
    (the transposed conv). Weight and bias receive no gradient through a fixed conv: the rule
    defines an input-space signal, not a training gradient.
    """

    ops = frozenset({"conv2d"})
    upsample: str = "linear"

    def __post_init__(self) -> None:
        check_upsample(self.upsample)

    def applies(self, call: OpCall) -> bool:
        return as_pair(call.params["stride"]) != (1, 1)  # padding="same" needs stride 1 anyway

    def apply(self, call: OpCall) -> Any:
        return _StrideFixFunction.apply(call.x, call.params["weight"], call.params["bias"], call, self.upsample)


class _StrideFixFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, call: OpCall, upsample: str) -> Tensor:
        p = call.params
        padding = 0 if p["padding"] == "valid" else p["padding"]
        ctx.save_for_backward(weight)
        ctx.meta = (tuple(x.shape[-2:]), p["stride"], padding, p["dilation"], int(p["groups"]), upsample)
        return call.original()

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, None, None, None, None]:
        (weight,) = ctx.saved_tensors
        gx = stride_fixed_conv_input_grad(g, weight, *ctx.meta)
        return gx, None, None, None, None
