"""Every CUDA path of maisi, run the moment a GPU is there (``pytest -m gpu``; ``benchmarks/gpu_check.sh``).

Skipped with a reason where CUDA is not available. Tolerances (of the [0, 1] image's range, tiny preset networks
with seeded random weights, 2 sampler steps and a decode): fp16 autocast 2e-2 and bf16 5e-2 of fp32; channels-last
and ``torch.compile`` 5e-3 of eager (cuDNN picks other algorithms and TF32 is on by default for convolutions);
slab decoding 1e-3; the memory model's estimate within [-5 %, +15 %] of ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from maisi.config import preset
from test_generation_common import perturbed_model_set

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA device (benchmarks/gpu_check.sh runs these on a GPU)",
    ),
]

CUDA = torch.device("cuda")
SHAPE = (64, 64, 64)
TOL = {"float16": 2e-2, "bfloat16": 5e-2}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) / max(float(b.max() - b.min()), 1e-12)


@pytest.fixture(scope="module")
def model_set():
    """The tiny preset's networks with seeded random weights (zero-initialised outputs made non-zero)."""
    return perturbed_model_set("tiny", CUDA)


def _mask():
    from maisi.generation.masks import MaskSample

    label = np.zeros(SHAPE, np.uint8)
    label[8:56, 10:54, 4:60] = 200
    label[16:40, 16:48, 10:50] = 1
    label[40:50, 20:44, 20:40] = 28
    return MaskSample(label=label, affine=np.eye(4), spacing=(3.0, 3.0, 3.0), source="test")


def _synthesise(model_set, *, dtype="float32", speedups=None, splits=None):
    from maisi.diffusion import randn, scheduler_from_config
    from maisi.generation.synthesis import synthesise
    from maisi.latents import LatentCodec
    from maisi.memory import decoding_in_slabs
    from maisi.runtime import compute_dtype

    noise = randn((1, 4, *(n // 4 for n in SHAPE)), generator=[torch.Generator().manual_seed(3)])
    codec = LatentCodec.from_model_set(
        model_set, decode_window=(16, 16, 16), decode_overlap=0.25, device=CUDA, dtype=compute_dtype(dtype)
    )
    slabs = decoding_in_slabs(model_set["vae"], splits) if splits else contextlib.nullcontext()
    with slabs:
        unit, timings = synthesise(
            model_set, scheduler_from_config(model_set.config.scheduler), codec, [_mask()], noise, steps=2,
            modality=1, device=CUDA, dtype=dtype, speedups=speedups,
        )  # fmt: skip
    return unit


@pytest.fixture(scope="module")
def fp32(model_set):
    return _synthesise(model_set)


# ------------------------------------------------------------------------------------------------ precision


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_sampling_and_decode_close_to_fp32(model_set, fp32, dtype):
    from maisi.performance import cuda_bf16_fast

    if dtype == "bfloat16" and not cuda_bf16_fast(CUDA):
        pytest.skip("bf16 is emulated on this GPU (compute capability < 8)")
    half = _synthesise(model_set, dtype=dtype)
    assert half.dtype == torch.float32
    assert _rel(half, fp32) <= TOL[dtype]


def test_bf16_decode_keeps_a_float32_output_layer(model_set):
    from maisi.latents import LatentCodec

    z = torch.randn(1, 4, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    image = LatentCodec.from_model_set(model_set, device=CUDA, dtype=torch.bfloat16).decode(z)
    on_grid = (image == image.bfloat16().float()).float().mean()
    assert float(on_grid) < 0.01  # not in 2^-8 steps (~7.8 HU)


def test_default_dtype_is_the_official_half_precision():
    from maisi.memory import default_device, default_dtype

    assert default_device() == "cuda"
    major, _ = torch.cuda.get_device_capability()
    assert default_dtype("cuda") == ("float16" if major >= 7 else "float32")


def test_generate_defaults_to_the_gpu_in_half_precision_within_its_plan(tmp_path):
    """``maisi generate`` with neither --device nor --dtype: this process's GPU, fp16 (compute capability >= 7),
    the memory plan made for the GPU's free memory and recorded in the sidecar."""
    import json

    from maisi import cli

    out = tmp_path / "run"
    argv = ["generate", "--output-size", "64", "64", "64", "--steps", "2", "--no-qc", "--no-preview"]
    assert cli.main([*argv, "--mask-source", "phantom", "--output-dir", str(out)]) == 0
    sidecar = json.loads(next(out.glob("sample_*.json")).read_text())
    major, _ = torch.cuda.get_device_capability()
    assert sidecar["device"] == "cuda:0" and sidecar["dtype"] == ("float16" if major >= 7 else "float32")
    memory = sidecar["memory"]
    assert memory["device"] == "cuda:0" and memory["peak_bytes"] <= memory["budget_bytes"]
    assert memory["decode"]["windows"] == 1  # a 16^3 latent fits in one pass on any GPU


# ------------------------------------------------------------------------------------------------ layouts, compile


def test_channels_last_on_cuda_equals_plain(model_set, fp32):
    from maisi.performance import Speedups

    last = _synthesise(model_set, speedups=Speedups(channels_last=True))
    assert _rel(last, fp32) <= 5e-3


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_sampling_equals_eager_and_keeps_the_cached_conditioning(model_set, mode):
    """Three steps through a compiled ControlNet + UNet (CUDA graphs with reduce-overhead): the cached conditioning
    is computed once and never overwritten by a graph replay."""
    from maisi.diffusion import make_denoiser
    from maisi.performance import Speedups, accelerate

    g = torch.Generator().manual_seed(0)
    control = (torch.rand(1, 8, *SHAPE, generator=g) > 0.5).float().to(CUDA)
    den = make_denoiser(
        model_set["unet"], controlnet=model_set["controlnet"], control=control,
        spacing=torch.full((1, 3), 300.0, device=CUDA), modality=torch.ones(1, dtype=torch.long, device=CUDA),
    )  # fmt: skip
    xs = [torch.randn(1, 4, 16, 16, 16, generator=g).to(CUDA) for _ in range(3)]
    t = torch.full((1,), 500.0, device=CUDA)
    nets = [model_set["unet"], model_set["controlnet"]]
    with torch.inference_mode():
        eager = [den(x, t).clone() for x in xs]
        with accelerate(nets, Speedups(compile=mode)):
            memo = model_set["controlnet"].controlnet_cond_embedding
            got = [den(x, t).clone() for x in xs]
            assert memo.hits == 2
    for a, b in zip(got, eager):
        assert _rel(a, b) <= 5e-3


def test_compiled_vae_decode_is_used_by_the_codec(model_set):
    from maisi.latents import LatentCodec
    from maisi.performance import Speedups, accelerate

    vae = model_set["vae"]
    codec = LatentCodec.from_model_set(model_set, device=CUDA)
    z = torch.randn(1, 4, 16, 16, 16, generator=torch.Generator().manual_seed(2))
    eager = codec.decode(z)
    with accelerate([vae], Speedups(compile="default")):
        assert "decode" in vae.__dict__
        compiled = codec.decode(z)
    assert _rel(compiled, eager) <= 5e-3


# ------------------------------------------------------------------------------------------------ memory


def test_slab_decode_on_cuda_equals_the_decoder(model_set, fp32):
    slabs = _synthesise(model_set, splits=4)
    assert _rel(slabs, fp32) <= 1e-3


@pytest.mark.parametrize(
    "window, splits, dtype", [(32, 1, "float32"), (32, 8, "float32"), (48, 4, "float16")]
)
def test_decode_estimate_matches_the_allocator(window, splits, dtype):
    """The official VAE (random weights): one window's measured peak against the model."""
    from maisi.latents import LatentCodec
    from maisi.memory import decoding_in_slabs
    from maisi.memory.estimate import decode_window_bytes
    from maisi.networks import build_vae
    from maisi.runtime import compute_dtype

    cfg = preset("rflow-ct").model.vae
    vae = build_vae(cfg).eval().to(CUDA)
    codec = LatentCodec(
        vae=vae, scale_factor=1.0, device=CUDA, output_device=CUDA, dtype=compute_dtype(dtype)
    )
    z = torch.randn(1, 4, window, window, window, device=CUDA)
    with torch.no_grad(), decoding_in_slabs(vae, splits):
        codec.decode(z)  # cuDNN's autotuning and autocast's caches outside the measurement
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = codec.decode(z)
        torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated() - base
    del out
    estimated = decode_window_bytes(cfg, (window,) * 3, splits, half=dtype != "float32", device="cuda")
    assert 0.95 * measured <= estimated <= 1.15 * measured, (estimated / measured, estimated, measured)


def test_plan_on_cuda_uses_the_free_memory_and_fits_what_it_measures():
    from maisi.latents import LatentCodec
    from maisi.memory import applied, available_memory, plan_memory
    from maisi.networks import build_vae

    cfg = preset("rflow-ct")
    gen = dataclasses.replace(cfg.generate, output_size=(256, 256, 256), dtype="float16", device="cuda")
    plan = plan_memory(cfg.model, gen, device="cuda", budget_bytes=4 * 2**30, components=("vae",))
    assert plan.peak <= 4 * 2**30 <= available_memory("cuda") + 2**40
    vae = build_vae(cfg.model.vae).eval().to(CUDA)
    codec = LatentCodec(vae=vae, scale_factor=1.0, device=CUDA, dtype=torch.float16, **plan.codec_options())
    z = torch.randn(1, 4, 64, 64, 64)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    with applied(plan, {"vae": vae}, device=CUDA):
        codec.decode(z)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() <= plan.peak


def test_offload_keeps_idle_networks_on_the_host(model_set, fp32):
    from maisi.memory import applied, plan_memory

    plan = plan_memory(model_set.config, dataclasses.replace(preset("tiny").generate, output_size=SHAPE),
                       device="cuda", budget_bytes=2**34)  # fmt: skip
    plan = dataclasses.replace(plan, offload=True)
    seen = []
    hook = model_set["vae"].decoder.register_forward_pre_hook(
        lambda m, a: seen.append(next(model_set["unet"].parameters()).device.type)
    )
    try:
        with applied(plan, model_set, device=CUDA):
            unit = _synthesise(model_set)
    finally:
        hook.remove()
    assert seen and set(seen) == {"cpu"}  # the UNet waited on the host while the VAE decoded
    assert all(next(model_set[n].parameters()).is_cuda for n in ("vae", "unet", "controlnet"))
    assert _rel(unit, fp32) <= 1e-5


# ------------------------------------------------------------------------------------------------ processes


def _phantoms(tmp_path):
    from maisi.data.phantom import write_phantoms

    out = tmp_path / "phantoms"
    write_phantoms(num=4, output_dir=out, size=(32, 32, 32), spacing=(6.0, 6.0, 6.0), seed=0)
    return out


def _train_cmd(phantoms, run_dir, nproc: int | None, *extra):
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [
        *(launch + ["-m"] if nproc else [sys.executable, "-m"]), "maisi", "train", "vae", "--preset", "tiny",
        "--data", str(phantoms), "--run-dir", str(run_dir), "--device", "cuda", "--no-progress",
        "train.patch_size=[16,16,16]", "train.adv_warmup_steps=1", "train.val_every=0", "train.max_steps=3",
        "train.ckpt_every=3", *extra,
    ]  # fmt: skip


def test_training_on_cuda_with_fp16_autocast(tmp_path):
    out = subprocess.run(
        _train_cmd(_phantoms(tmp_path), tmp_path / "run", None, "train.amp=fp16"),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "final: step=3" in out.stdout


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL DDP needs two GPUs (one rank per GPU)")
def test_ddp_training_with_nccl(tmp_path):
    out = subprocess.run(
        _train_cmd(_phantoms(tmp_path), tmp_path / "ddp", 2, "train.batch_size=1"),
        capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert out.stdout.count("final: step=3") == 1


def test_sharded_generation_on_cuda(tmp_path):
    """torchrun with two ranks (on one GPU when there is one): each makes its share of the samples."""
    nproc = 2
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "maisi",
        "generate", "--weights", "demo", "--output-size", "64", "64", "64", "--num-samples", "2", "--steps", "2",
        "--device", "cuda", "--no-qc", "--no-preview", "--mask-source", "phantom", "--output-dir", str(tmp_path),
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    images = sorted(tmp_path.rglob("*_image.nii.gz"))
    assert len(images) == 2, [str(p) for p in tmp_path.rglob("*")]
    assert all(p.with_name(p.name.replace("_image.nii.gz", ".json")).is_file() for p in images)
