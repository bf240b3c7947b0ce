"""3x3x3 convolutions by the Winograd F(4x4x4, 3x3x3) algorithm on the CPU (float32, inference).

A 3x3x3 convolution with stride 1 and padding 1 costs 27 multiply-adds per output voxel and channel pair. Winograd's
minimal filtering (Lavin & Gray, 2016, eq. 8, taken to three dimensions) computes each 4^3 output tile from its
6^3 input tile with 216 products per channel pair, 8x fewer. The products are 216 independent GEMMs over the input
channels; the tile transforms before and after them, and for few channels the GEMMs too (:func:`conv3d`), are done
by a small C library compiled on first use (``winograd3d.c``, :mod:`maisi.kernels.build`), split over
``torch.get_num_threads()`` threads.

Numerics: the interpolation points are 0, 1, -1, 2, -1/2 (and infinity), which keep float32 errors near 5e-6 of the
output's largest magnitude per convolution (the usual 0, +-1, +-2 give 3e-5; direct convolution 3e-7). Work is
done in chunks of tiles, so the extra memory stays under ~64 MB at any volume size.

    U = transform_weight(conv.weight)            # once per weight: (216, C_in, C_out)
    y = conv3d(x, U, conv.bias)                  # equals F.conv3d(x, w, b, padding=1) within ~1e-5
"""

from __future__ import annotations

import ctypes
import threading

import torch

from maisi.kernels import build, parallel

#: G of F(4, 3) for the points 0, 1, -1, 2, -1/2, infinity: the kernel transform U = G g G^T along each axis
_G = (
    (1.0, 0.0, 0.0),
    (-1 / 3, -1 / 3, -1 / 3),
    (1 / 3, -1 / 3, 1 / 3),
    (1 / 15, 2 / 15, 4 / 15),
    (-16 / 15, 8 / 15, -4 / 15),
    (0.0, 0.0, 1.0),
)
TILE = 4  # output voxels per tile and axis
FUSED_TILES = 36  # tiles per block of the fused path (BT in winograd3d.c)
#: the fused path re-reads the transformed kernel (216 C_in C_out floats) for every block of tiles, so it pays up to
#: 128 x 64 channels (7 MB, cache-resident); past that, the separate path's big GEMMs win (measured, 2 threads)
FUSED_MAX_CHANNEL_PRODUCT = 128 * 64
POSITIONS = 216  # 6^3 transform positions
CHUNK_BYTES = 64 << 20  # transformed input + GEMM output of one chunk of tiles

#: per-thread scratch for the transformed input and the GEMM output, reused across calls: a fresh 64 MB buffer
#: per convolution would be mapped and page-faulted again at every call (glibc maps allocations over 32 MB)
_scratch = threading.local()
#: the C functions of winograd3d.c and their arguments (p pointer, i int, l long)
_SIGNATURES = {
    "winograd_input": "piiiilllliilllpl",
    "winograd_output": "plillliippiiillll",
    "winograd_weight": "pllllp",
    "winograd_fused": "piiiilllliillpippllllp",
}


def _library() -> ctypes.CDLL | None:
    return build.load("winograd3d", _SIGNATURES)


def available() -> bool:
    """Whether the transform library is built (compiling it on the first call)."""
    return _library() is not None


def unavailable_reason() -> str | None:
    """Why :func:`available` is False."""
    return build.unavailable_reason("winograd3d")


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """Kernel transform ``U = G g G^T`` (3D) of a (C_out, C_in, 3, 3, 3) weight, summed in float64, then rounded.

    Returns:
        (216, C_in, C_out) float32, contiguous: the right-hand sides of the 216 GEMMs.
    """
    if weight.dim() != 5 or tuple(weight.shape[2:]) != (3, 3, 3):
        raise ValueError(f"weight must be (C_out, C_in, 3, 3, 3), got {tuple(weight.shape)}")
    c_out, c_in = weight.shape[:2]
    lib = _library()
    if lib is None:  # the reference formula (slower): U = (G x G x G) g
        g = torch.tensor(_G, dtype=torch.float64)
        g3 = torch.einsum("ai,bj,ck->abcijk", g, g, g).reshape(POSITIONS, 27)
        u = g3 @ weight.detach().to("cpu", torch.float64).reshape(c_out * c_in, 27).T  # (216, C_out * C_in)
        return u.reshape(POSITIONS, c_out, c_in).transpose(1, 2).contiguous().float()
    w = weight.detach().to("cpu", torch.float32).contiguous()
    with torch.inference_mode(False):
        u = torch.empty((POSITIONS, c_in, c_out), dtype=torch.float32)
    wp, up = w.data_ptr(), u.data_ptr()
    parallel.split(
        lambda cb, ce: lib.winograd_weight(wp, c_out, c_in, cb, ce, up), 0, c_in, torch.get_num_threads()
    )
    return u


def _workspace(numel: int) -> torch.Tensor:
    """This thread's scratch buffer of at least ``numel`` floats (grown when needed, then kept)."""
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.numel() < numel:
        with torch.inference_mode(False):  # an ordinary tensor, writable inside and outside inference mode
            buf = _scratch.buf = torch.empty(numel, dtype=torch.float32)
    return buf[:numel]


def release_workspace() -> None:
    """Free this thread's scratch buffer (:func:`maisi.performance.accelerate` does so when its block ends)."""
    _scratch.buf = None


def conv3d(
    x: torch.Tensor,
    u: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    chunk_bytes: int = CHUNK_BYTES,
    fused: bool | None = None,
) -> torch.Tensor:
    """``F.conv3d(x, w, bias, padding=1)`` by Winograd F(4, 3), with ``u = transform_weight(w)``.

    Two ways to run the same arithmetic: *separate* (every tile's transform into a buffer of up to
    ``chunk_bytes``, then 216 ``torch.bmm`` GEMMs, then the inverse transforms) and *fused* (blocks of
    :data:`FUSED_TILES` tiles transformed, multiplied by the C micro-kernel and transformed back while they are in
    the cache; C_out a multiple of 8).

    Args:
        x: (N, C_in, D, H, W) float32 on the CPU, channels-last (fastest) or contiguous.
        u: (216, C_in, C_out) from :func:`transform_weight`.
        bias: (C_out,) or None.
        fused: force a path; default fused up to :data:`FUSED_MAX_CHANNEL_PRODUCT` channel pairs.

    Returns:
        (N, C_out, D, H, W) float32 in the memory format of ``x``.
    """
    lib = _library()
    if lib is None:
        raise RuntimeError(f"the Winograd kernel is unavailable: {unavailable_reason()}")
    if x.dim() != 5 or x.dtype != torch.float32 or x.device.type != "cpu":
        raise ValueError(f"x must be a 5D float32 CPU tensor, got {x.dtype} {tuple(x.shape)} on {x.device}")
    n, c_in, d, h, w = x.shape
    if u.shape[:2] != (POSITIONS, c_in) or u.dtype != torch.float32 or not u.is_contiguous():
        raise ValueError(f"u must be a contiguous float32 (216, {c_in}, C_out) tensor, got {tuple(u.shape)}")
    c_out = u.shape[2]
    last = x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
    fmt = torch.channels_last_3d if last else torch.contiguous_format
    if not x.is_contiguous(memory_format=fmt):
        x = x.contiguous(memory_format=fmt)
    y = torch.empty((n, c_out, d, h, w), dtype=torch.float32, memory_format=fmt)
    if bias is not None:
        bias = bias.detach().to("cpu", torch.float32).contiguous()
        bias_ptr = bias.data_ptr()
    else:
        bias_ptr = None
    nd, nh, nw = (-(-s // TILE) for s in (d, h, w))
    tiles = nd * nh * nw
    threads = torch.get_num_threads()
    if fused is None:
        fused = c_in * c_out <= FUSED_MAX_CHANNEL_PRODUCT
    if fused and c_out % 8 == 0:
        per_thread = POSITIONS * FUSED_TILES * (c_in + c_out)
        work = _workspace(per_thread * threads)
        xs, ys, up, wp = x.stride(), y.stride(), u.data_ptr(), work.data_ptr()
        for b in range(n):
            xp, yp = x[b].data_ptr(), y[b].data_ptr()
            # each thread takes whole blocks of tiles and its own scratch
            blocks = -(-tiles // FUSED_TILES)

            def run(i: int, bb: int, be: int, xp=xp, yp=yp) -> None:
                scratch = wp + 4 * per_thread * i
                lib.winograd_fused(
                    xp,
                    d,
                    h,
                    w,
                    c_in,
                    *xs[1:],
                    nh,
                    nw,
                    bb * FUSED_TILES,
                    min(tiles, be * FUSED_TILES),
                    up,
                    c_out,
                    bias_ptr,
                    yp,
                    *ys[1:],
                    scratch,
                )

            parallel.split(run, 0, blocks, threads, indexed=True)
        return y
    per_tile = POSITIONS * (c_in + c_out) * 4
    chunk = max(1, min(tiles, chunk_bytes // per_tile))
    work = _workspace(POSITIONS * chunk * (c_in + c_out))
    v_buf, m_buf = work[: POSITIONS * chunk * c_in], work[POSITIONS * chunk * c_in :]
    xs, ys = x.stride(), y.stride()
    for b in range(n):
        xp, yp = x[b].data_ptr(), y[b].data_ptr()
        for t0 in range(0, tiles, chunk):
            count = min(chunk, tiles - t0)
            v = v_buf[: POSITIONS * count * c_in]
            m = m_buf[: POSITIONS * count * c_out]
            vp, mp = v.data_ptr(), m.data_ptr()

            def forward_transform(tb: int, te: int, xp=xp, t0=t0, vp=vp, count=count) -> None:
                lib.winograd_input(
                    xp, d, h, w, c_in, xs[1], xs[2], xs[3], xs[4], nh, nw, t0, tb, te, vp, count * c_in
                )

            def inverse_transform(tb: int, te: int, yp=yp, t0=t0, mp=mp, count=count) -> None:
                lib.winograd_output(
                    mp, count * c_out, c_out, t0, tb, te, nh, nw, bias_ptr, yp, d, h, w, *ys[1:]
                )

            parallel.split(forward_transform, t0, t0 + count, threads)
            torch.bmm(v.view(POSITIONS, count, c_in), u, out=m.view(POSITIONS, count, c_out))
            parallel.split(inverse_transform, t0, t0 + count, threads)
    return y


__all__ = ["TILE", "available", "conv3d", "release_workspace", "transform_weight", "unavailable_reason"]
