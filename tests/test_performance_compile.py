"""``Speedups(compile=...)``: blocks nest without recompiling, the codec's ``decode`` is what gets compiled for a VAE,
and the cached ControlNet conditioning stays outside compiled graphs (CUDA graphs would overwrite it)."""

from __future__ import annotations

import pytest
import torch

import maisi.performance as performance
from maisi.config import preset
from maisi.performance import Speedups, accelerate
from maisi.performance.control import _CachedEmbedding

COMPILE = Speedups(compile="default", cache_control=True, onednn=False, winograd=False, channels_last=False)


@pytest.fixture(scope="module")
def nets():
    from maisi.networks import build

    torch.manual_seed(0)
    cfg = preset("tiny").model
    return {c: build(c, cfg).eval() for c in ("unet", "controlnet", "vae")}


@pytest.fixture
def resets(monkeypatch):
    import torch._dynamo

    calls = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: calls.append(1))
    return calls


def test_compile_wraps_forward_and_the_vae_decode(nets, resets):
    with accelerate(list(nets.values()), COMPILE):
        for m in nets.values():
            assert "forward" in m.__dict__
        assert "decode" in nets["vae"].__dict__  # LatentCodec calls decode, never forward
        assert "decode" not in nets["unet"].__dict__
    assert all("forward" not in m.__dict__ and "decode" not in m.__dict__ for m in nets.values())
    assert resets == [1]  # compiled code dropped once, when the block ends


def test_an_inner_block_over_the_same_networks_does_nothing(nets, resets):
    """synthesise() opens a block inside generate()'s: it must neither recompile nor drop the outer code."""
    with accelerate(list(nets.values()), COMPILE):
        compiled = {name: m.__dict__["forward"] for name, m in nets.items()}
        embedding = nets["controlnet"].controlnet_cond_embedding
        for _ in range(3):  # one inner block per batch
            with accelerate(list(nets.values()), COMPILE):
                assert all(m.__dict__["forward"] is compiled[n] for n, m in nets.items())
                assert nets["controlnet"].controlnet_cond_embedding is embedding
        assert resets == []
        assert all(m.__dict__["forward"] is compiled[n] for n, m in nets.items())
    assert resets == [1]


def test_compiled_with_no_modules_touches_nothing(resets):
    with performance.compiled([], mode="default"):
        pass
    assert resets == []


def test_the_conditioning_cache_runs_eagerly():
    assert getattr(_CachedEmbedding.forward, "_torchdynamo_disable", False)


@pytest.mark.slow
def test_compiled_controlnet_keeps_its_cached_conditioning_correct(nets):
    """CPU inductor (minutes on 2 cores): two steps of a compiled ControlNet equal eager, the cache hits once."""
    from maisi.diffusion import make_denoiser

    g = torch.Generator().manual_seed(0)
    control = (torch.rand(1, 8, 32, 32, 32, generator=g) > 0.5).float()
    den = make_denoiser(
        nets["unet"], controlnet=nets["controlnet"], control=control, spacing=torch.full((1, 3), 300.0),
        modality=torch.ones(1, dtype=torch.long),
    )  # fmt: skip
    x, t = torch.randn(1, 4, 8, 8, 8, generator=g), torch.full((1,), 500.0)
    with torch.inference_mode():
        eager = [den(x, t), den(x * 0.5, t)]
        with accelerate([nets["unet"], nets["controlnet"]], COMPILE):
            memo = nets["controlnet"].controlnet_cond_embedding
            got = [den(x, t), den(x * 0.5, t)]
            assert memo.hits == 1
    for a, b in zip(got, eager):
        assert float((a - b).abs().max()) <= 1e-3 * float(b.abs().max())
