"""The ControlNet conditioning is built compactly and not kept longer than a batch's sampling (issue #24).

- :func:`maisi.conditioning.binarize_labels` works on 1-byte ids (no int64 copy of the label map) and equals the
  int64 formula bit for bit, in any output dtype;
- generation makes the planes on the device from uint8 ids, in the compute dtype when it is half (the same numbers
  under autocast);
- with guidance the concatenated conditioning is built once, so every step passes the same tensor and the
  embedding memo matches by identity (no ``torch.equal``);
- after sampling a batch the memo is empty and the conditioning is freed before the decode.
"""

from __future__ import annotations

import weakref
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from maisi.conditioning import binarize_labels
from maisi.config import preset
from maisi.diffusion import make_denoiser
from maisi.performance import PLAIN, accelerate, cached_control_embedding
from maisi.performance import control as control_module
from test_generation_common import perturbed_model_set


def _int64_planes(label: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """The former formula: int64 ids, int64 planes, stacked, float32."""
    if label.ndim == 5:
        label = label[:, 0]
    ids = label.long()
    return torch.stack([(ids >> k) & 1 for k in range(bits)], dim=1).float()


class _Allocations(TorchDispatchMode):
    """Records (dtype, numel) of every tensor an operation returns."""

    def __init__(self) -> None:
        super().__init__()
        self.made: list[tuple[torch.dtype, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = {
            a.untyped_storage().data_ptr()
            for a in torch.utils._pytree.tree_leaves((args, kwargs))
            if _is_dense(a)
        }
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if _is_dense(t) and t.untyped_storage().data_ptr() not in given:  # new memory, not a view
                self.made.append((t.dtype, t.numel()))
        return out


def _is_dense(t) -> bool:
    return isinstance(t, torch.Tensor) and t.layout == torch.strided


# ---------------------------------------------------------------------------------------------------- binarize


@pytest.mark.parametrize("source", [torch.uint8, torch.int64, torch.int32, torch.float32])
def test_binarize_labels_equals_the_int64_formula_for_every_id(source):
    every = torch.arange(256).reshape(1, 1, 4, 8, 8).to(source)
    expect = _int64_planes(every)
    assert expect.sum().item() == 8 * 128  # each bit is set for half of the 256 ids
    got = binarize_labels(every)
    assert got.dtype == torch.float32 and got.shape == (1, 8, 4, 8, 8)
    assert torch.equal(got, expect)
    for dtype in (torch.float16, torch.bfloat16):
        half = binarize_labels(every, dtype=dtype)
        assert half.dtype == dtype and torch.equal(half.float(), expect)
    # (B, X, Y, Z) input and fewer bits, as before
    assert torch.equal(binarize_labels(every[:, 0], bits=3), expect[:, :3])


def test_binarize_labels_keeps_the_low_bits_of_out_of_range_ids_as_before():
    ids = torch.tensor([[-1, 256, 257, 511, 300, -256]])
    assert torch.equal(binarize_labels(ids), _int64_planes(ids))
    assert torch.equal(binarize_labels(ids, bits=10), _int64_planes(ids, bits=10))
    with pytest.raises(ValueError, match="one channel"):
        binarize_labels(torch.zeros(1, 2, 4, 4, 4, dtype=torch.uint8))


@pytest.mark.parametrize("source", [torch.uint8, torch.int64])
def test_binarize_labels_makes_no_int64_or_float64_copy_of_the_label_map(source):
    label = torch.randint(0, 256, (1, 1, 16, 16, 16)).to(source)
    with _Allocations() as seen:
        planes = binarize_labels(label, dtype=torch.float16)
    voxels = label.numel()
    wide = [m for m in seen.made if m[0] in (torch.int64, torch.float64, torch.int32) and m[1] >= voxels]
    assert wide == []
    # the planes themselves, and label-sized uint8 scratch only (the ids; one reused bit plane)
    assert (torch.float16, 8 * voxels) in seen.made
    assert {d for d, n in seen.made if n >= voxels} <= {torch.uint8, torch.float16}
    assert torch.equal(planes.float(), _int64_planes(label))


# ---------------------------------------------------------------------------------------------------- stubs


class _Embedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(8, 4, 1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.conv(x)


class _StubControlNet(nn.Module):
    """Records the ``controlnet_cond`` it is given; residuals from its (memoisable) conditioning embedding."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.controlnet_cond_embedding = _Embedding()
        self.seen: list[tuple[int, torch.dtype, torch.Tensor]] = []

    def forward(self, x, timesteps, controlnet_cond, conditioning_scale=1.0, class_labels=None, context=None):
        self.seen.append(
            (id(controlnet_cond), controlnet_cond.dtype, controlnet_cond.detach().float().clone())
        )
        emb = self.controlnet_cond_embedding(controlnet_cond)
        mid = emb.float().mean(dim=(2, 3, 4), keepdim=True)[:, :4] * conditioning_scale
        if class_labels is not None:
            mid = mid * (1 + class_labels.float().reshape(-1, 1, 1, 1, 1))
        return [], mid


class _StubUNet(nn.Module):
    def forward(
        self,
        x,
        timesteps,
        class_labels=None,
        spacing_tensor=None,
        mid_block_additional_residual=None,
        down_block_additional_residuals=None,
        **_,
    ):
        out = x * 0.5 + timesteps.reshape(-1, 1, 1, 1, 1) * 1e-3
        if spacing_tensor is not None:
            out = out + spacing_tensor[:, :1].reshape(-1, 1, 1, 1, 1) * 1e-4
        if mid_block_additional_residual is not None:
            out = out + mid_block_additional_residual
        return out


def _labels(seed: int, batch: int = 1, shape=(8, 8, 8)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 1, *shape), generator=g).to(torch.uint8)


# ---------------------------------------------------------------------------------------------------- guidance


@pytest.mark.parametrize("control_batch", [2, 1])
def test_guided_conditioning_is_built_once_and_the_memo_hits_by_identity(control_batch, monkeypatch):
    cn, unet = _StubControlNet(), _StubUNet()
    control = binarize_labels(_labels(1, control_batch))
    uncond = binarize_labels(_labels(2, control_batch))
    spacing = torch.tensor([[150.0, 150.0, 150.0]])
    den = make_denoiser(
        unet,
        controlnet=cn,
        control=control,
        uncond_control=uncond,
        spacing=spacing,
        modality=1,
        guidance_scale=2.0,
    )
    x = torch.randn(2, 4, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    steps = [torch.full((2,), float(v)) for v in (900, 600, 300, 100)]

    def no_equal(*_a, **_k):
        raise AssertionError("the memo compared values (torch.equal): the conditioning was rebuilt")

    with cached_control_embedding(cn) as memo, torch.inference_mode():
        monkeypatch.setattr(control_module.torch, "equal", no_equal)
        outs = [den(x, t) for t in steps]
        monkeypatch.undo()
    assert len({i for i, _, _ in cn.seen}) == 1  # one tensor object at every step
    assert memo.hits == len(steps) - 1 and cn.controlnet_cond_embedding.calls == 1
    # what the controlnet saw: [cond; uncond] of the batch
    expect = torch.cat([control.expand(2, -1, -1, -1, -1), uncond.expand(2, -1, -1, -1, -1)])
    assert torch.equal(cn.seen[0][2], expect)
    # the numbers: uncond + s (cond - uncond), each pass alone
    with torch.inference_mode():
        c = make_denoiser(unet, controlnet=cn, control=control, spacing=spacing, modality=1)
        u = make_denoiser(unet, controlnet=cn, control=uncond, spacing=spacing, modality=0)
        for t, out in zip(steps, outs):
            oc, ou = c(x, t), u(x, t)
            assert torch.allclose(out, ou + 2.0 * (oc - ou), atol=1e-6)
            assert not torch.allclose(out, oc, atol=1e-3)


def test_unguided_conditioning_is_built_once_too():
    cn, unet = _StubControlNet(), _StubUNet()
    den = make_denoiser(unet, controlnet=cn, control=binarize_labels(_labels(3)), modality=1)
    x = torch.randn(3, 4, 8, 8, 8)
    with torch.no_grad():
        for v in (900.0, 500.0, 100.0):
            den(x, torch.full((3,), v))
    assert len({i for i, _, _ in cn.seen}) == 1  # the batch-1 control expanded once, not per step


# ---------------------------------------------------------------------------------------------------- generation


class _ModelSet(dict):
    def __init__(self, cn, unet):
        super().__init__(unet=unet, controlnet=cn)
        self.config = SimpleNamespace(
            unet=SimpleNamespace(num_class_embeds=2, include_top_region_index_input=False)
        )


def _mask(label: np.ndarray):
    from maisi.generation.masks import MaskSample

    return MaskSample(label=label, affine=np.eye(4), spacing=(3.0, 3.0, 3.0), source="test")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_generation_planes_come_from_uint8_ids_in_the_compute_dtype(dtype, monkeypatch):
    from maisi.generation import synthesis

    cn, unet = _StubControlNet(), _StubUNet()
    label = _labels(4)[0, 0].numpy()
    label[2:4, 2:4, 2:4] = 26  # a hepatic tumour: guidance gets a tumour-free unconditional control
    moved: list[torch.dtype] = []
    real_binarize = synthesis.binarize_labels

    def spy(ids, *a, **k):
        moved.append(ids.dtype)
        return real_binarize(ids, *a, **k)

    monkeypatch.setattr(synthesis, "binarize_labels", spy)
    with _Allocations() as seen:
        den = synthesis.build_denoiser(
            _ModelSet(cn, unet),
            [_mask(label)],
            modality=1,
            guidance=2.0,
            requested_regions=[],
            device=torch.device("cpu"),
            dtype=dtype,
        )
    assert moved == [torch.uint8, torch.uint8]  # control and unconditional control, from uint8 ids
    assert not [m for m in seen.made if m[0] in (torch.int64, torch.float64) and m[1] >= label.size]
    with torch.inference_mode():
        den(torch.randn(1, 4, 8, 8, 8), torch.tensor([500.0]))
    ((_, cond_dtype, planes),) = cn.seen
    assert cond_dtype == dtype  # half compute: half planes; float32 stays float32
    expect = _int64_planes(torch.from_numpy(label)[None, None])
    assert torch.equal(planes[:1], expect)
    from maisi.conditioning import without_tumors

    assert torch.equal(planes[1:], _int64_planes(torch.from_numpy(without_tumors(label))[None, None]))


@pytest.fixture(scope="module")
def tiny_controlnet():
    from maisi.networks import build

    torch.manual_seed(0)
    cn = build("controlnet", preset("tiny").model).eval()
    with torch.no_grad():
        for p in cn.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return cn


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_planes_give_the_controlnet_the_same_numbers_under_autocast(tiny_controlnet, dtype):
    label = _labels(5, shape=(32, 32, 32))
    x = torch.randn(1, 4, 8, 8, 8, generator=torch.Generator().manual_seed(1))
    kw = dict(x=x, timesteps=torch.tensor([500.0]), class_labels=torch.tensor([1]))
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype):
        down32, mid32 = tiny_controlnet(controlnet_cond=binarize_labels(label), **kw)
        down16, mid16 = tiny_controlnet(controlnet_cond=binarize_labels(label, dtype=dtype), **kw)
    assert mid16.dtype == dtype and mid16.abs().sum() > 0
    assert torch.equal(mid16, mid32) and all(torch.equal(a, b) for a, b in zip(down16, down32))


# ---------------------------------------------------------------------------------------------------- synthesise


@pytest.fixture(scope="module")
def model_set():
    """The tiny preset's networks with seeded random weights (zero-initialised outputs made non-zero)."""
    return perturbed_model_set("tiny")


def test_after_sampling_the_memo_is_empty_and_the_conditioning_freed_before_decode(model_set):
    from maisi.diffusion import randn, scheduler_from_config
    from maisi.generation.synthesis import sampling_networks, synthesise
    from maisi.latents import LatentCodec

    label = np.zeros((32, 32, 32), np.uint8)
    label[4:28, 5:27, 2:30] = 200
    label[8:20, 8:24, 5:25] = 1
    label[10:14, 10:14, 10:14] = 26  # guidance with a tumour-free unconditional control
    gen = preset("tiny").generate
    windows = {k: getattr(gen, k) for k in ("decode_window", "decode_overlap") if getattr(gen, k) is not None}
    codec = LatentCodec.from_model_set(model_set, **windows)
    embedding = model_set["controlnet"].controlnet_cond_embedding
    given: list[weakref.ref] = []
    handle = embedding.register_forward_pre_hook(lambda _m, args: given.append(weakref.ref(args[0])))
    at_decode: list[tuple[int, list[bool]]] = []
    real_decode = codec.decode

    def decode(latent):
        memo = model_set["controlnet"].controlnet_cond_embedding
        at_decode.append((len(memo.entries), [r() is None for r in given]))
        return real_decode(latent)

    codec.decode = decode
    try:
        with accelerate(sampling_networks(model_set, codec), PLAIN.replace(cache_control=True)):
            memo = model_set["controlnet"].controlnet_cond_embedding
            for seed in (3, 4):  # two batches inside one outer block (as generate holds it)
                noise = randn((1, 4, 8, 8, 8), generator=[torch.Generator().manual_seed(seed)])
                synthesise(
                    model_set,
                    scheduler_from_config(model_set.config.scheduler),
                    codec,
                    [_mask(label)],
                    noise,
                    steps=3,
                    modality=1,
                    guidance=2.0,
                    speedups=PLAIN.replace(cache_control=True),
                )
                assert memo.entries == []
            assert memo.hits == 2 * 2  # each batch: computed once, reused at its two later steps
    finally:
        handle.remove()
        del codec.decode
    assert len(given) == 2  # the embedding ran once per batch
    assert at_decode == [(0, [True]), (0, [True, True])]  # memo empty, conditioning freed, before each decode
