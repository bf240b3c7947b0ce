"""The meta-device tracer counts what a computation allocates, as an allocator would see it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from maisi.memory.trace import Trace, trace_peak, tracing

META = torch.device("meta")


def test_counts_allocations_views_and_frees():
    x = torch.empty(1000, device=META)  # made outside: not counted

    def fn():
        a = x * 2  # 4000 B
        v = a[:10]  # a view: nothing new
        b = torch.empty(500, device=META)  # 2000 B, peak 6000
        del a, b
        x.add_(1)  # in place on the outside tensor: nothing new
        c = torch.empty(250, dtype=torch.float64, device=META)  # 2000 B, with v keeping a's 4000 B alive
        return v, c

    tr = trace_peak(fn)
    assert tr.peak == 6000
    assert tr.live == 0  # the outputs were dropped


def test_live_counts_what_a_function_keeps():
    kept = []
    tr = trace_peak(lambda: kept.append(torch.empty(100, device=META)))
    assert tr.live == 400 and tr.peak == 400


def test_attention_is_counted_as_a_fused_kernel():
    q = torch.empty(2, 4, 4096, 32, device=META)
    tr = trace_peak(F.scaled_dot_product_attention, q, q, q)
    # output (as q) + log-sum-exp per query; never the 4096 x 4096 matrix
    assert tr.peak == q.numel() * 4 + 2 * 4 * 4096 * 4


def test_autocast_casts_convolution_inputs_once_per_parameter():
    conv = torch.nn.Conv3d(8, 16, 3, padding=1, device=META)
    x = torch.empty(1, 8, 16, 16, 16, device=META)
    plain = trace_peak(conv, x)
    half = Trace()
    with torch.no_grad(), tracing(half, autocast=torch.float16):
        y = conv(x)
        z = conv(x)
        assert y.dtype == torch.float16 and z.dtype == torch.float16
        del y, z
    out = 16 * 16**3
    assert plain.peak == out * 4
    # the parameters cast once (autocast's cache), the input cast for each call (freed after it), two half outputs
    weights = conv.weight.numel() * 2 + conv.bias.numel() * 2
    assert half.peak == weights + x.numel() * 2 + 2 * out * 2


def test_notes_winograd_eligible_convolutions():
    big = torch.nn.Conv3d(64, 64, 3, padding=1, device=META)
    small = torch.nn.Conv3d(8, 64, 3, padding=1, device=META)
    tr = trace_peak(
        lambda: (
            big(torch.empty(1, 64, 16, 16, 16, device=META)),
            small(torch.empty(1, 8, 16, 16, 16, device=META)),
        )
    )
    assert list(tr.winograd_kernels.values()) == [216 * 64 * 64 * 4]
    assert 0 < tr.winograd_scratch <= 64 * 2**20 and tr.winograd_bytes == 216 * 64 * 64 * 4 + tr.winograd_scratch
    tiny = trace_peak(lambda: big(torch.empty(1, 64, 8, 8, 8, device=META)))  # 8 tiles: stays with oneDNN
    assert tiny.winograd_bytes == 0
