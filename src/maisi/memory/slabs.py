"""The MAISI VAE decoder run in slabs: the same arithmetic in less memory.

MONAI's decoder keeps about five full-resolution activations alive at its last level (the block input, the
normalised copy, the convolution output, ...): 1.5 KB per output voxel for the official VAE, 22-55 GB for the
volumes MAISI makes. The official implementation splits each convolution's input into ``num_splits`` pieces along
one axis ("tensor-parallel splits") and concatenates the pieces again, which bounds the convolution's working
memory but not the activations it concatenates.

:func:`decoding_in_slabs` runs the decoder's blocks slab by slab along the first spatial axis instead, writing each
slab of a block's output straight into that output:

- group-norm statistics are accumulated over the slabs first (float64 merging of per-channel moments), then each
  slab is normalised (with its SiLU) on its own, with the one-row halo its 3x3x3 convolution needs;
- a residual block with as many output as input channels adds its second convolution into its input in place; one
  that changes the channel count writes its result over the first convolution's output, row by row, keeping the
  one original row the next slab still reads;
- an upsampling block interpolates each slab from a low-resolution slab one row wider on each side (trilinear
  interpolation then gives the same values as on the whole volume).

At the last level the official VAE then holds its 128-channel block input and one 64-channel output (768 bytes
per output voxel) plus one slab's temporaries, which ``num_splits`` makes as small as wanted. ``num_splits`` is
the number of slabs at the output resolution; coarser levels use slabs of the same number of rows. The results
equal the decoder's own forward to float rounding (group norm as batch norm over the merged statistics).

:func:`decoder_peak` is the memory of this schedule, computed from the VAE config alone, allocation by allocation
(``tests/test_memory_slabs.py`` checks it against the schedule traced on the meta device).

Tensors are (B, C, X, Y, Z); slabs run along X.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from maisi.performance.layout import channel_sums, normalise_channels

# ------------------------------------------------------------------------------------------------ geometry


def row_ranges(rows: int, slabs: int) -> list[tuple[int, int]]:
    """``slabs`` contiguous, near-equal row ranges covering ``rows`` (at most one per row)."""
    slabs = max(1, min(int(slabs), int(rows)))
    return [((rows * i) // slabs, (rows * (i + 1)) // slabs) for i in range(slabs)]


def level_slabs(num_splits: int, rows: int, out_rows: int) -> int:
    """Slabs of a level with ``rows`` rows when the output has ``out_rows`` rows cut into ``num_splits``."""
    return max(1, min(int(rows), -(-int(num_splits) * int(rows) // int(out_rows))))


def _halo(a: int, b: int, rows: int, pad: int) -> tuple[int, int]:
    return max(a - pad, 0), min(b + pad, rows)


def _upsample_source(lo: int, hi: int, low_rows: int) -> tuple[int, int]:
    """Low-resolution rows whose 2x trilinear interpolation is exact on high-resolution rows ``[lo, hi)``: one
    more row on each side than the rows sampled (interpolation clamps at the edge of what it is given)."""
    return max(lo // 2 - 1, 0), min((hi + 1) // 2 + 1, low_rows)


# ------------------------------------------------------------------------------------------------ the executor


def _conv3d_of(module: nn.Module) -> nn.Conv3d | None:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv3d)]
    return convs[0] if len(convs) == 1 else None


def _row_padding(module: nn.Module) -> int | None:
    """The rows of halo a convolution block needs (its padding), or None when it cannot run in slabs."""
    conv = _conv3d_of(module)
    if conv is None or isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        return None
    k, s, p, d = conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0]
    if s != 1 or d != 1 or k != 2 * p + 1:
        return None
    return int(p)


def _is_resblock(block: nn.Module) -> bool:
    return (
        type(block).__name__ == "MaisiResBlock"
        and isinstance(block.norm1, nn.GroupNorm)
        and isinstance(block.norm2, nn.GroupNorm)
        and _row_padding(block.conv1) == 1
        and _row_padding(block.conv2) == 1
        and (block.in_channels == block.out_channels or _row_padding(block.nin_shortcut) == 0)
    )


def _transposed_of(module: nn.Module) -> nn.ConvTranspose3d | None:
    convs = [m for m in module.modules() if isinstance(m, nn.ConvTranspose3d)]
    return convs[0] if len(convs) == 1 else None


def _is_upsample(block: nn.Module) -> bool:
    """A MAISI upsampling block of a kind that runs in slabs: trilinear 2x then a 3x3x3 convolution, or a 3x3x3
    transposed convolution of stride 2 (padding 1, output padding 1: the mask VAE's)."""
    if type(block).__name__ != "MaisiUpsample":
        return False
    if not block.use_convtranspose:
        return _row_padding(block.conv) == 1
    t = _transposed_of(block.conv)
    return (
        t is not None
        and tuple(t.kernel_size) == (3, 3, 3)
        and tuple(t.stride) == (2, 2, 2)
        and tuple(t.padding) == (1, 1, 1)
        and tuple(t.output_padding) == (1, 1, 1)
        and tuple(t.dilation) == (1, 1, 1)
        and t.groups == 1
    )


def _transposed_source(a: int, b: int, low_rows: int) -> tuple[int, int]:
    """Input rows of a stride-2 3x3x3 transposed convolution (padding 1) that give output rows ``[a, b)`` exactly:
    output row ``o`` reads input rows ``(o - 1) / 2 .. (o + 1) / 2``."""
    return a // 2, min(b // 2 + 1, low_rows)


def _new_rows(like: torch.Tensor, rows: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An empty tensor shaped like ``like`` with ``rows`` rows, in its memory format."""
    fmt = torch.channels_last_3d if _channels_last(like) else torch.contiguous_format
    shape = (like.shape[0], like.shape[1], rows, *like.shape[3:])
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device, memory_format=fmt)


def _channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d)


def group_moments(x: torch.Tensor, num_groups: int, ranges: Sequence[tuple[int, int]]):
    """Per-channel mean and variance of ``x`` (1, C, ...) under group normalisation: the group's moments,
    accumulated slab by slab (per-channel sums in float64 by the CPU group-norm kernel, or ``var_mean`` in float32
    elsewhere; the slabs' moments merged in float64).

    Returns:
        ``(mean, var)``, each (C,) float32 on ``x``'s device: every channel carries its group's values.
    """
    c = x.shape[1]
    count = 0
    mean = torch.zeros(c, dtype=torch.float64, device=x.device)
    m2 = torch.zeros_like(mean)
    for a, b in ranges:
        part = x[:, :, a:b]
        n = part.shape[0] * part[0, 0].numel()
        sums = channel_sums(part)
        if sums is not None:  # channels-last float32 on a CPU: the kernel's float64 sums (one pass)
            mean_c = sums[0].to(x.device) / n
            var_c = (sums[1].to(x.device) / n - mean_c.square()).clamp_min(0.0)
        else:
            var_c, mean_c = torch.var_mean(part.float(), dim=(0, 2, 3, 4), correction=0)
            mean_c, var_c = mean_c.double(), var_c.double()
        # Chan et al.: merge (count, mean, M2) of the slabs seen so far with this slab's
        delta = mean_c - mean
        total = count + n
        mean = mean + delta * (n / total)
        m2 = m2 + var_c * n + delta.square() * (count * n / total)
        count = total
    var_c = m2 / count
    group = mean.view(num_groups, -1)
    g_mean = group.mean(1, keepdim=True)
    g_var = (var_c.view(num_groups, -1) + (group - g_mean).square()).mean(1, keepdim=True)
    expand = (num_groups, c // num_groups)
    return g_mean.expand(expand).reshape(c).float(), g_var.expand(expand).reshape(c).float()


def _normalise(
    x: torch.Tensor, norm: nn.GroupNorm, moments, *, silu: bool, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Group norm of a slab with the whole tensor's moments (batch norm over them is the same function)."""
    mean, var = moments
    x = x if dtype is None else x.to(dtype)
    if x.device.type == "cpu":  # channels-last float32: one fused pass of the group-norm kernel
        scale = torch.rsqrt(var + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight.detach()
        shift = norm.bias.detach() if norm.bias is not None else torch.zeros_like(mean)
        y = normalise_channels(x, mean, scale, shift, silu=silu)
        if y is not None:
            return y
    y = F.batch_norm(x, mean, var, norm.weight, norm.bias, False, 0.0, norm.eps)
    if silu:
        F.silu(y, inplace=True)
    return y


class SlabDecoder:
    """A replacement ``forward`` of a MAISI decoder (``decoder.blocks``) that runs it in slabs (module doc).

    Blocks it does not know (attention, transposed-convolution upsampling) run whole.
    """

    def __init__(self, decoder: nn.Module, num_splits: int) -> None:
        if int(num_splits) < 1:
            raise ValueError(f"num_splits must be >= 1, got {num_splits}")
        self.decoder = decoder
        self.num_splits = int(num_splits)
        self.upsamplings = sum(1 for b in decoder.blocks if type(b).__name__ == "MaisiUpsample")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 1:
            return self._one(x)
        out = None
        for i in range(x.shape[0]):
            y = self._one(x[i : i + 1])
            if out is None:
                out = y.new_empty((x.shape[0], *y.shape[1:]))
            out[i : i + 1] = y
            del y
        return out

    def _one(self, x: torch.Tensor) -> torch.Tensor:
        out_rows = x.shape[2] * 2**self.upsamplings
        owned = False  # whether x was made here (and may be changed in place)
        pending = None  # a group norm waiting to be applied, slab by slab, by the next convolution
        blocks = list(self.decoder.blocks)
        for block in blocks:
            slabs = level_slabs(self.num_splits, x.shape[2], out_rows)
            ranges = row_ranges(x.shape[2], slabs)
            if isinstance(block, nn.GroupNorm):
                if pending is not None:
                    x, owned = self._apply_whole(pending, x), True
                pending = (block, group_moments(x, block.num_groups, ranges))
                continue
            if type(block).__name__ == "MaisiConvolution" and _row_padding(block) is not None:
                x, owned, pending = self._conv(block, x, ranges, pending), True, None
                continue
            if pending is not None:
                x, owned, pending = self._apply_whole(pending, x), True, None
            if _is_resblock(block):
                x = self._resblock(block, x, ranges, owned)
            elif _is_upsample(block):
                x = self._upsample(block, x, row_ranges(2 * x.shape[2], level_slabs(
                    self.num_splits, 2 * x.shape[2], out_rows)))  # fmt: skip
            else:
                y = block(x)
                owned = y.untyped_storage().data_ptr() != x.untyped_storage().data_ptr() or owned
                x = y
                continue
            owned = True
        if pending is not None:
            x = self._apply_whole(pending, x)
        return x

    @staticmethod
    def _apply_whole(pending, x: torch.Tensor) -> torch.Tensor:
        norm, moments = pending
        return _normalise(x, norm, moments, silu=False).to(x.dtype)

    @staticmethod
    def _conv(block: nn.Module, x: torch.Tensor, ranges, pending) -> torch.Tensor:
        """A convolution block (a group norm before it applied per slab, in float32: the decoder's output layer)."""
        pad = _row_padding(block)
        rows = x.shape[2]
        out = None
        for a, b in ranges:
            lo, hi = _halo(a, b, rows, pad)
            t = x[:, :, lo:hi]
            if pending is not None:
                t = _normalise(t, pending[0], pending[1], silu=False, dtype=torch.float32)
            y = block(t)[:, :, a - lo : b - lo]
            del t
            if len(ranges) == 1:
                return y
            if out is None:
                out = _new_rows(y, rows)
            out[:, :, a:b] = y
            del y
        return out

    @staticmethod
    def _resblock(block: nn.Module, x: torch.Tensor, ranges, owned: bool) -> torch.Tensor:
        """``x + conv2(silu(norm2(conv1(silu(norm1(x))))))`` (the shortcut a 1x1 convolution when the channel count
        changes), slab by slab."""
        rows = x.shape[2]
        moments = group_moments(x, block.norm1.num_groups, ranges)
        h = None
        for a, b in ranges:
            lo, hi = _halo(a, b, rows, 1)
            t = _normalise(x[:, :, lo:hi], block.norm1, moments, silu=True)
            y = block.conv1(t)[:, :, a - lo : b - lo]
            del t
            if len(ranges) == 1:
                h = y
            else:
                if h is None:
                    h = _new_rows(y, rows)
                h[:, :, a:b] = y
            del y
        moments = group_moments(h, block.norm2.num_groups, ranges)
        same = block.in_channels == block.out_channels
        if same and owned:  # the residual sum goes into x
            for a, b in ranges:
                lo, hi = _halo(a, b, rows, 1)
                t = _normalise(h[:, :, lo:hi], block.norm2, moments, silu=True)
                y = block.conv2(t)[:, :, a - lo : b - lo]
                del t
                x[:, :, a:b] += y
                del y
            return x
        # the result overwrites h; the last row of each slab is written once the next slab has read it
        held: tuple[int, torch.Tensor] | None = None
        for a, b in ranges:
            lo, hi = _halo(a, b, rows, 1)
            t = _normalise(h[:, :, lo:hi], block.norm2, moments, silu=True)
            y = block.conv2(t)[:, :, a - lo : b - lo]
            del t
            y += x[:, :, a:b] if same else block.nin_shortcut(x[:, :, a:b])
            if len(ranges) == 1:
                return y
            if held is not None:
                h[:, :, held[0] : held[0] + 1] = held[1]
            h[:, :, a : b - 1] = y[:, :, :-1]
            held = (b - 1, y[:, :, -1:].clone())
            del y
        h[:, :, held[0] : held[0] + 1] = held[1]
        return h

    @staticmethod
    def _upsample(block: nn.Module, x: torch.Tensor, ranges) -> torch.Tensor:
        """``conv(interpolate(x, scale_factor=2, trilinear))`` or the transposed convolution, slab by slab."""
        low = x.shape[2]
        rows = 2 * low
        out = None
        for a, b in ranges:
            if block.use_convtranspose:
                la, lb = _transposed_source(a, b, low)
                y = block.conv(x[:, :, la:lb])[:, :, a - 2 * la : b - 2 * la]
            else:
                lo, hi = _halo(a, b, rows, 1)
                la, lb = _upsample_source(lo, hi, low)
                up = F.interpolate(x[:, :, la:lb], scale_factor=2.0, mode="trilinear")
                t = up[:, :, lo - 2 * la : hi - 2 * la]
                y = block.conv(t)[:, :, a - lo : b - lo]
                del up, t
            if len(ranges) == 1:
                return y
            if out is None:
                out = _new_rows(y, rows)
            out[:, :, a:b] = y
            del y
        return out


@contextlib.contextmanager
def decoding_in_slabs(vae: nn.Module, num_splits: int) -> Iterator[SlabDecoder | None]:
    """Run ``vae.decoder`` in slabs (:class:`SlabDecoder`) for the block; yields it (None when ``vae`` has no
    MAISI decoder, which then runs as it is)."""
    decoder = getattr(vae, "decoder", None)
    if decoder is None or not isinstance(getattr(decoder, "blocks", None), nn.ModuleList):
        yield None
        return
    before = decoder.__dict__.get("forward")
    runner = SlabDecoder(decoder, num_splits)
    decoder.forward = runner
    try:
        yield runner
    finally:
        if before is None:
            decoder.__dict__.pop("forward", None)
        else:
            decoder.forward = before


# ------------------------------------------------------------------------------------------------ the memory model


@dataclass(frozen=True)
class _Block:
    kind: str  # conv, res, up, norm, other
    c_in: int
    c_out: int
    pad: int = 1


def decoder_blocks(vae_cfg) -> list[_Block]:
    """The blocks of a MAISI decoder from its :class:`~maisi.config.schema.VAEConfig` (MONAI's order)."""
    ch = list(reversed(vae_cfg.num_channels))
    res = list(reversed(vae_cfg.num_res_blocks))
    attn = list(reversed(vae_cfg.attention_levels))
    blocks = [_Block("conv", vae_cfg.latent_channels, ch[0])]
    if vae_cfg.with_decoder_nonlocal_attn:
        blocks += [_Block("other", ch[0], ch[0])] * 3
    c = ch[0]
    for i, out in enumerate(ch):
        for _ in range(res[i]):
            blocks.append(_Block("res", c, out))
            c = out
            if attn[i]:
                blocks.append(_Block("other", c, c))
        if i < len(ch) - 1:
            blocks.append(_Block("up_t" if vae_cfg.use_convtranspose else "up", c, c))
    blocks += [_Block("norm", c, c), _Block("conv", c, vae_cfg.out_channels)]
    return blocks


class _Ledger:
    """Live bytes and their peak, allocation by allocation."""

    def __init__(self) -> None:
        self.live = self.peak = 0

    def alloc(self, n: float) -> None:
        self.live += int(n)
        self.peak = max(self.peak, self.live)

    def free(self, n: float) -> None:
        self.live -= int(n)


@dataclass(frozen=True)
class _Precision:
    """Bytes per element of what the decoder computes: activations (convolution outputs, group-norm slabs),
    the output layer, interpolation (float32 under CPU autocast) and whether convolutions copy their input
    (a slab of an NCDHW tensor is not contiguous; channels-last slabs along X are)."""

    act: int = 4
    interp: int = 4
    copies: bool = False
    touched: bool = (
        False  # count a slab buffer's pages as they are written (resident memory), not when allocated
    )


def decoder_peak(
    vae_cfg,
    latent: Sequence[int],
    num_splits: int,
    *,
    act_bytes: int = 4,
    channels_last: bool = True,
    batch: int = 1,
    resident: bool = False,
) -> int:
    """Peak bytes of the tensors a decoder call creates in :class:`SlabDecoder` (its float32 output included;
    weights and the input latent not), for a latent of spatial size ``latent``.

    Args:
        act_bytes: bytes per activation element (4: float32; 2: convolutions under fp16/bf16 autocast, with the
            output layer in float32 as :class:`~maisi.latents.LatentCodec` runs it).
        channels_last: activations channels-last (the CPU default; slabs along X need no copies).
        batch: samples decoded one after another into one output.
        resident: count what is resident (a CPU's RSS: a block's output buffer grows as its slabs are written)
            rather than what is allocated (a CUDA allocator's figure).
    """
    prec = _Precision(act=int(act_bytes), copies=not channels_last, touched=resident)
    blocks = decoder_blocks(vae_cfg)
    rows, area = int(latent[0]), math.prod(int(s) for s in latent[1:])
    out_rows = rows * vae_cfg.downsample
    led = _Ledger()
    x_bytes = 0  # the current activation (the input latent is not counted)
    pending = False
    for blk in blocks:
        ranges = row_ranges(rows, level_slabs(num_splits, rows, out_rows))
        if blk.kind == "norm":
            _moments(led, ranges, blk.c_in, area, prec)
            pending = True
        elif blk.kind == "conv":
            x_bytes = _conv_model(led, blk, ranges, rows, area, x_bytes, pending, prec)
            pending = False
        elif blk.kind == "res":
            _moments(led, ranges, blk.c_in, area, prec)
            x_bytes = _res_model(led, blk, ranges, rows, area, x_bytes, prec)
        elif blk.kind in ("up", "up_t"):
            up_ranges = row_ranges(2 * rows, level_slabs(num_splits, 2 * rows, out_rows))
            x_bytes = _up_model(led, blk, up_ranges, rows, area, x_bytes, prec)
            rows, area = 2 * rows, 4 * area
        else:  # runs whole: its output beside its input, and as much again inside
            out = blk.c_out * rows * area * prec.act
            led.alloc(2 * out)
            led.free(out + x_bytes)
            x_bytes = out
    if batch > 1:  # the first sample's output beside the batch's
        return led.peak + batch * x_bytes
    return led.peak


def _moments(led: _Ledger, ranges, c: int, area: int, prec: _Precision) -> None:
    if prec.act != 4:  # var_mean of a float32 copy of each slab
        n = c * max(b - a for a, b in ranges) * area * 4
        led.alloc(n)
        led.free(n)


def _slab_pass(led: _Ledger, ranges, out: int, temps, prec: _Precision) -> None:
    """One pass over the slabs: ``temps(a, b)`` lists (bytes, freed before the slab's result) of each slab's
    temporaries in allocation order, the last one its result (copied into a buffer of ``out`` bytes made after the
    first slab's result, resident as its slabs are written; with one slab the result is the output)."""
    single = len(ranges) == 1
    rows = ranges[-1][1]
    for i, (a, b) in enumerate(ranges):
        items = temps(a, b)
        for n, _ in items:
            led.alloc(n)
        for n, early in items:
            if early:
                led.free(n)
        if single:
            return  # the result is the output (its bytes are in ``out`` already)
        if prec.touched:
            led.alloc(out * (b - a) // rows)
        elif i == 0:
            led.alloc(out)
        for n, early in items:
            if not early:
                led.free(n)
    if prec.touched:
        led.alloc(out - sum(out * (b - a) // rows for a, b in ranges))  # rounding


def _conv_model(led, blk, ranges, rows, area, x_bytes, pending, prec) -> int:
    act = 4 if pending else prec.act  # the output layer (after the last group norm) runs in float32
    out = blk.c_out * rows * area * act

    def temps(a, b):
        lo, hi = _halo(a, b, rows, blk.pad)
        n_in = blk.c_in * (hi - lo) * area
        items = []
        if pending:
            if prec.act != 4:
                items.append((n_in * 4, True))  # the float32 copy of the slab
            items.append((n_in * 4, True))  # the normalised slab
        elif prec.copies:
            items.append((n_in * prec.act, True))
        items.append((blk.c_out * (hi - lo) * area * act, False))
        return items

    _slab_pass(led, ranges, out, temps, prec)
    led.free(x_bytes)
    return out


def _res_model(led, blk, ranges, rows, area, x_bytes, prec) -> int:
    act = prec.act
    h = blk.c_out * rows * area * act

    def conv1(a, b):
        lo, hi = _halo(a, b, rows, 1)
        return [(blk.c_in * (hi - lo) * area * act, True), (blk.c_out * (hi - lo) * area * act, False)]

    _slab_pass(led, ranges, h, conv1, prec)
    _moments(led, ranges, blk.c_out, area, prec)
    same = blk.c_in == blk.c_out
    single = len(ranges) == 1
    row = blk.c_out * area * act
    for a, b in ranges:
        lo, hi = _halo(a, b, rows, 1)
        t, y = blk.c_out * (hi - lo) * area * act, blk.c_out * (hi - lo) * area * act
        led.alloc(t)
        led.alloc(y)
        led.free(t)
        if not same:
            shortcut = blk.c_out * (b - a) * area * act
            copy = blk.c_in * (b - a) * area * act if prec.copies else 0
            led.alloc(copy + shortcut)
            led.free(copy + shortcut)
        if not (same and x_bytes) and not single:
            led.alloc(row)  # the row held for the next slab (beside the one it replaces)
            if a > 0:
                led.free(row)
        led.free(y)
    if same and x_bytes:
        led.free(h)  # the sum went into the block's input
        return x_bytes
    if not single:
        led.free(row)
    led.free(x_bytes)
    return h


def _up_model(led, blk, ranges, low_rows, low_area, x_bytes, prec) -> int:
    rows, area = 2 * low_rows, 4 * low_area
    out = blk.c_out * rows * area * prec.act

    def temps(a, b):
        if blk.kind == "up_t":
            la, lb = _transposed_source(a, b, low_rows)
            copy = [(blk.c_in * (lb - la) * low_area * prec.act, True)] if prec.copies else []
            return [*copy, (blk.c_out * 2 * (lb - la) * area * prec.act, False)]
        lo, hi = _halo(a, b, rows, 1)
        la, lb = _upsample_source(lo, hi, low_rows)
        interp = prec.interp if prec.act != 4 else 4
        items = [(blk.c_in * 2 * (lb - la) * area * interp, True)]
        if prec.copies or prec.act != 4:  # a slab of an NCDHW tensor, or its cast, for the convolution
            items.append((blk.c_in * (hi - lo) * area * prec.act, True))
        items.append((blk.c_out * (hi - lo) * area * prec.act, False))
        return items

    _slab_pass(led, ranges, out, temps, prec)
    led.free(x_bytes)
    return out


__all__ = [
    "SlabDecoder",
    "decoder_blocks",
    "decoder_peak",
    "decoding_in_slabs",
    "group_moments",
    "row_ranges",
]
