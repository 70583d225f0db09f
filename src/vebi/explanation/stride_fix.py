"""The stride fix: the backward of a strided convolution without its grid artifacts.

A stride-s transposed convolution writes only every s-th pixel of its output. The fix instead
upsamples the signal from the strided output size to the size a stride-1 convolution would
produce, then applies the stride-1 transposed convolution with the same weights and padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vebi.explanation.rules import OpCall, Rule, as_pair

__all__ = ["StrideFixConv", "stride_fix_kernel", "stride_fixed_conv_input_grad"]

def stride_fixed_conv_input_grad(
    g: Tensor, weight: Tensor, input_size: tuple[int, int],
    stride: Any, padding: Any, dilation: Any, groups: int,
) -> Tensor:
    """Backward of a strided conv with the stride fix.

    For input size H, kernel k, padding p, dilation d, stride s: the stride-1 output size is
    H1 = H + 2p - d(k - 1). The signal g (B, C_out, H_out, W_out) is nearest-upsampled to
    (H1, W1) -- stride-1 position i takes strided cell floor(i / s) -- and passed through
    the transposed conv with stride 1 and the same weights, padding, dilation and groups,
    which gives back (B, C_in, H, W).

    Computed without the full-resolution conv: upsampling by s is a stride-s transposed conv
    with an s x s box, so the two steps are one stride-s transposed conv with the kernel
    K = box_s * dilate_d(w) (size d(k - 1) + s). Two equal ways to run it, whichever is faster:

    * few input channels (an image-input layer): the polyphase form -- output phase
      (a, b) of a stride-s transposed conv with K is a stride-1 *forward* conv of g with the
      flipped sub-kernel K[a::s, b::s], so one conv2d with C_in s_h s_w outputs and a pixel
      shuffle give it (a backward-data conv that produces 3 channels is slow on CPUs);
    * otherwise: convolutions commute, so it is the plain transposed conv Y = conv_T_s(g, w)
      followed by an s x s box sum at input resolution, gx[i] = sum_{a < s} Y[i + p - a].

    The upsampled rows/columns beyond H1/W1 (present when s does not divide H1) are then
    subtracted again: two thin bands.
    """
    (sh, sw), (ph, pw), (dh, dw) = as_pair(stride), as_pair(padding), as_pair(dilation)
    (h, w), (kh, kw) = input_size, weight.shape[-2:]
    h1, w1 = h + 2 * ph - dh * (kh - 1), w + 2 * pw - dw * (kw - 1)
    ho, wo = g.shape[-2:]
    if groups == 1 and weight.shape[1] <= _POLYPHASE_MAX_IN:
        gx = _polyphase_transposed_conv(g, stride_fix_kernel(weight, (sh, sw), (dh, dw)), (sh, sw))
        gx = gx.narrow(-2, ph, h).narrow(-1, pw, w)
    else:
        y = F.conv_transpose2d(g, weight, None, (sh, sw), 0, 0, groups, (dh, dw))
        # y_pad[j] = y[j - (s - 1)], long enough for the last window (rows p + s - 1 + h - 1)
        y = F.pad(y, (sw - 1, max(0, pw + w - y.shape[-1]), sh - 1, max(0, ph + h - y.shape[-2])))
        gx = _box_sum(_box_sum(y, sh, ph, h, -2), sw, pw, w, -1)
    extra_h, extra_w = ho * sh - h1, wo * sw - w1
    if extra_h > 0:  # rows h1 .. ho*sh-1 of the upsampled signal: copies of the last row of cells
        band = g[..., -1:, :].expand(*g.shape[:-2], extra_h, wo).repeat_interleave(sw, dim=-1)
        corr = F.conv_transpose2d(band, weight, None, 1, (0, pw), 0, groups, (dh, dw)).narrow(-1, 0, w)
        _subtract_rows(gx, corr, h1 - ph)
    if extra_w > 0:  # columns w1 .. wo*sw-1, rows 0 .. h1-1
        band = g[..., -1:].expand(*g.shape[:-1], extra_w).repeat_interleave(sh, dim=-2).narrow(-2, 0, h1)
        corr = F.conv_transpose2d(band, weight, None, 1, (ph, 0), 0, groups, (dh, dw)).narrow(-2, 0, h)
        _subtract_rows(gx.transpose(-1, -2), corr.transpose(-1, -2), w1 - pw)
    return gx


_POLYPHASE_MAX_IN = 8  # input channels up to which the polyphase route is the faster one (CPU, measured)


def stride_fix_kernel(weight: Tensor, stride: tuple[int, int], dilation: tuple[int, int]) -> Tensor:
    """K = box_s * dilate_d(w): the dilated kernel summed over all s_h x s_w shifts."""
    (sh, sw), (dh, dw) = stride, dilation
    kh, kw = weight.shape[-2:]
    dilated = weight.new_zeros(*weight.shape[:2], dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    dilated[..., ::dh, ::dw] = weight
    # full correlation of every kernel slice with an s_h x s_w box of ones
    box = F.conv_transpose2d(dilated.reshape(-1, 1, *dilated.shape[-2:]), weight.new_ones(1, 1, sh, sw))
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


def _box_sum(x: Tensor, s: int, start: int, n: int, dim: int) -> Tensor:
    """out[i] = sum_{b < s} x[start + i + b] along ``dim``, for i < n."""
    out = x.narrow(dim, start, n).clone()
    for b in range(1, s):
        out += x.narrow(dim, start + b, n)
    return out


def _subtract_rows(target: Tensor, corr: Tensor, offset: int) -> None:
    """target[..., offset + i, :] -= corr[..., i, :] for the rows that fall inside target."""
    lo, hi = max(offset, 0), min(offset + corr.shape[-2], target.shape[-2])
    if hi > lo:
        target[..., lo:hi, :] -= corr[..., lo - offset:hi - offset, :]


@dataclass(frozen=True)
class StrideFixConv(Rule):
    """Stride fix for convolutions with stride > 1 (any padding, dilation, groups).

    Input gradient: see :func:`stride_fixed_conv_input_grad`. Stride-1 convolutions keep the
    plain backward (the transposed conv). Weight and bias receive no gradient through a fixed
    conv: the rule defines an input-space signal, not a training gradient.
    """

    ops = frozenset({"conv2d"})

    def applies(self, call: OpCall) -> bool:
        return as_pair(call.params["stride"]) != (1, 1)  # padding="same" needs stride 1 anyway

    def apply(self, call: OpCall) -> Any:
        return _StrideFixFunction.apply(call.x, call.params["weight"], call.params["bias"], call)


class _StrideFixFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, call: OpCall) -> Tensor:
        p = call.params
        padding = 0 if p["padding"] == "valid" else p["padding"]
        ctx.save_for_backward(weight)
        ctx.meta = (tuple(x.shape[-2:]), p["stride"], padding, p["dilation"], int(p["groups"]))
        return call.original()

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, None, None, None]:
        (weight,) = ctx.saved_tensors
        size, stride, padding, dilation, groups = ctx.meta
        gx = stride_fixed_conv_input_grad(g, weight, size, stride, padding, dilation, groups)
        return gx, None, None, None
