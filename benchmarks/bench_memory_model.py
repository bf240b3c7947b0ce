"""The memory model against measured peaks: every estimate of :mod:`maisi.memory` beside what the run used.

Each configuration runs in a fresh process. Measured = peak RSS during the work minus RSS after the imports (CPU;
so the interpreter and libraries, the model's ``runtime`` part, are left out of both sides), or
``torch.cuda.max_memory_allocated`` on CUDA. Estimated = the plan's stage estimate without ``runtime``. Kinds:

``decode``
    one VAE decode (``LatentCodec.decode`` in :func:`maisi.memory.decoding_in_slabs`, under
    :func:`maisi.performance.accelerate` as ``maisi generate`` runs it) of a latent of ``--latent`` voxels in windows
    of ``--window`` (``--windows K``: only the first K windows of the plan) with ``--splits`` slabs;
``sampling``
    two sampler steps (ControlNet + UNet, the guidance batch with ``--guidance``) with every network of the run
    resident and sped up, label-map bit planes as the pipeline builds them;
``generate``
    ``maisi generate`` end to end on the shipped demo weights, the plan applied (peak over every stage).

    python benchmarks/bench_memory_model.py --suite cpu --name memory_model_cpu
    python benchmarks/bench_memory_model.py --suite gpu --device cuda --name memory_model_gpu
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, reset_rss_peak, rss, rss_peak, run_child, write_results  # noqa: E402

#: (kind, preset, options) per configuration of a suite
SUITES = {
    "cpu": [
        ("generate", "demo", {"size": 64}),
        ("generate", "demo", {"size": 128}),
        ("generate", "demo", {"size": 128, "batch": 2, "guidance": 2.0}),
        ("sampling", "tiny", {"size": 128, "guidance": 2.0}),
        ("decode", "tiny", {"latent": 64, "window": 64, "splits": 4}),
        ("sampling", "rflow-ct", {"size": 128}),
        ("sampling", "rflow-ct", {"size": 128, "guidance": 2.0}),
        ("decode", "rflow-ct", {"latent": 16, "window": 16, "splits": 1}),
        ("decode", "rflow-ct", {"latent": 16, "window": 16, "splits": 1, "dtype": "bfloat16"}),
        ("decode", "rflow-ct", {"latent": 24, "window": 24, "splits": 1}),
        ("decode", "rflow-ct", {"latent": 32, "window": 32, "splits": 1}),
        ("decode", "rflow-ct", {"latent": 32, "window": 32, "splits": 4}),
        ("decode", "rflow-ct", {"latent": 48, "window": 48, "splits": 1}),
        ("decode", "rflow-ct", {"latent": 48, "window": 48, "splits": 16}),
        ("decode", "rflow-ct", {"latent": "128x128x192", "plan": "8GB", "windows": 1}),
        ("decode", "rflow-ct", {"latent": 64, "window": 64, "splits": 8}),
    ],
    "gpu": [
        ("sampling", "rflow-ct", {"size": 256, "dtype": "float16"}),
        ("sampling", "rflow-ct", {"size": 256, "guidance": 2.0, "dtype": "float16"}),
        ("sampling", "rflow-ct", {"size": 256}),
        ("decode", "rflow-ct", {"latent": 48, "window": 48, "splits": 1, "dtype": "float16"}),
        ("decode", "rflow-ct", {"latent": 64, "window": 64, "splits": 4, "dtype": "float16"}),
        ("decode", "rflow-ct", {"latent": 128, "window": 128, "splits": 16, "dtype": "float16"}),
        ("generate", "demo", {"size": 128, "dtype": "float16"}),
    ],
}


def _shape(v) -> tuple[int, int, int]:
    parts = [int(p) for p in str(v).split("x")]
    return tuple(parts * 3) if len(parts) == 1 else tuple(parts)


def _measure_start(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    reset_rss_peak()
    return rss()


def _measure_end(device, base: int) -> int:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    return rss_peak() - base


def _without_runtime(estimate) -> tuple[int, dict]:
    parts = {k: v for k, v in estimate.parts.items() if k != "runtime"}
    return sum(parts.values()), parts


def child_decode(args, device) -> dict:
    import torch

    import maisi.latents as latents_module
    from maisi.config import preset
    from maisi.latents import LatentCodec
    from maisi.memory import DecodeSettings, decoding_in_slabs, parse_memory, plan_memory
    from maisi.memory.estimate import FIRST_USE_CPU, Request, decode_stage, weight_bytes
    from maisi.memory.trace import trace_peak
    from maisi.networks import build_vae
    from maisi.performance import Speedups, accelerate
    from maisi.runtime import compute_dtype

    cfg = preset(args.preset)
    latent = _shape(args.latent)
    d = cfg.model.vae.downsample
    req = Request(output_size=tuple(s * d for s in latent), dtype=args.dtype, control=False)
    if args.plan:
        gen = cfg.generate
        gen.output_size, gen.dtype = req.output_size, args.dtype
        mplan = plan_memory(
            cfg.model, gen, budget_bytes=parse_memory(args.plan), device=str(device), components=("vae",)
        )
        settings = mplan.decode
        planned = mplan.describe()
    else:
        settings = DecodeSettings(_shape(args.window), args.overlap, args.splits)
        planned = None
    base = rss() if device.type == "cpu" else 0
    vae = build_vae(cfg.model.vae).eval().to(device)
    codec = LatentCodec(
        vae=vae, scale_factor=1.0, decode_window=settings.window, decode_overlap=settings.overlap,
        device=device, dtype=compute_dtype(args.dtype),
    )  # fmt: skip
    windows = settings.windows(latent) if settings.tiled(latent) else 1
    if args.windows:
        original = latents_module.tile_plan
        latents_module.tile_plan = lambda *a, **k: original(*a, **k)[: args.windows]
    z = torch.randn(1, cfg.model.vae.latent_channels, *latent, generator=torch.Generator().manual_seed(0))
    resident = weight_bytes("vae", cfg.model)
    kernels = 0
    if device.type == "cpu" and args.dtype == "float32":
        meta = torch.empty(1, cfg.model.vae.latent_channels, 16, 16, 16, device="meta")
        from maisi.memory.estimate import meta_network

        kernels = trace_peak(meta_network("vae", cfg.model).decode, meta).winograd_bytes + FIRST_USE_CPU
    elif device.type == "cpu":
        kernels = FIRST_USE_CPU
    est = decode_stage(
        cfg.model, req, settings, device=device.type, resident=resident, kernels=kernels, held=0
    )
    estimated, parts = _without_runtime(est)
    speedups = Speedups() if args.dtype == "float32" else None
    with accelerate([vae], speedups, device=device), decoding_in_slabs(vae, settings.num_splits):
        start = _measure_start(device)
        if device.type == "cpu":
            start = base
        t0 = time.perf_counter()
        image = codec.decode(z)
        seconds = time.perf_counter() - t0
        measured = _measure_end(device, start)
        if device.type == "cuda":
            measured += resident  # max_memory_allocated counts from the start: weights were there before
    total_rss = rss_peak()
    del image
    done = min(args.windows or windows, windows)
    return {
        "settings": settings.describe(latent),
        "plan": planned,
        "windows_decoded": done,
        "seconds": seconds,
        "estimated": estimated,
        "measured": measured,
        "parts": parts,
        "peak_rss_total": total_rss,
    }


def child_sampling(args, device) -> dict:
    import torch

    from maisi.conditioning import binarize_labels
    from maisi.config import preset
    from maisi.diffusion import make_denoiser
    from maisi.memory.estimate import Request, fixed_stages, weight_bytes
    from maisi.memory.plan import _kernels
    from maisi.networks import build
    from maisi.performance import Speedups, accelerate
    from maisi.runtime import compute_dtype

    cfg = preset(args.preset)
    size = (args.size,) * 3
    b = args.batch
    req = Request(output_size=size, batch=b, guidance=args.guidance, dtype=args.dtype)
    resident = sum(weight_bytes(c, cfg.model) for c in ("unet", "controlnet", "vae"))
    everything = dict.fromkeys(("mask model", "mask decode", "sampling", "decode", "writing"), resident)
    est = {s.name: s for s in fixed_stages(
        cfg.model, req, device=device.type, resident=everything, kernels=_kernels(cfg.model, req, device.type)
    )}["sampling"]  # fmt: skip
    estimated, parts = _without_runtime(est)
    base = rss()
    nets = {c: build(c, cfg.model).eval().to(device) for c in ("unet", "controlnet", "vae")}
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 120, (b, 1, *size), generator=g, dtype=torch.uint8)
    control = binarize_labels(label).to(device)
    uncond = binarize_labels(label // 2).to(device) if args.guidance else None
    kwargs = {"spacing": torch.full((b, 3), 150.0, device=device)}
    if cfg.model.unet.num_class_embeds is not None:
        kwargs["modality"] = torch.ones(b, dtype=torch.long, device=device)
    den = make_denoiser(
        nets["unet"], controlnet=nets["controlnet"], control=control, guidance_scale=args.guidance,
        uncond_control=uncond, **kwargs,
    )  # fmt: skip
    del control, uncond  # as in generation: the denoiser holds the planes (under guidance, one concatenation)
    latent = tuple(s // cfg.model.vae.downsample for s in size)
    x = torch.randn(b, 4, *latent, generator=g).to(device)
    t = torch.full((b,), 500.0, device=device)
    dtype = compute_dtype(args.dtype)
    speedups = Speedups() if args.dtype == "float32" else None
    with accelerate(list(nets.values()), speedups, device=device), torch.inference_mode():
        start = base if device.type == "cpu" else _measure_start(device)
        if device.type == "cpu":
            reset_rss_peak()
        t0 = time.perf_counter()
        for _ in range(2):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                out = den(x, t).float()
            x = x + 0.01 * out
            del out
        seconds = (time.perf_counter() - t0) / 2
        measured = _measure_end(device, start)
        if device.type == "cuda":
            measured += (
                torch.cuda.memory_allocated(device) * 0
            )  # weights and inputs are in max_memory_allocated
            measured = torch.cuda.max_memory_allocated(device)
    return {"seconds_per_step": seconds, "estimated": estimated, "measured": measured, "parts": parts}


def child_generate(args, device) -> dict:
    import dataclasses

    from maisi.config import preset
    from maisi.generation import generate
    from maisi.generation.weights import load_weights
    from maisi.latents import LatentCodec  # noqa: F401
    from maisi.memory import applied, plan_memory

    cfg = preset(args.preset)
    gen = dataclasses.replace(
        cfg.generate,
        output_size=(args.size,) * 3,
        num_samples=args.batch,
        batch_size=args.batch,
        guidance=args.guidance,
        dtype=args.dtype,
        device=str(device),
        mask_source="phantom",
        preview=False,
        qc=False,
        steps=2,
    )
    base = rss()
    mplan = plan_memory(cfg.model, gen, device=str(device), components=("vae", "unet", "controlnet"))
    gen = dataclasses.replace(gen, decode_window=mplan.decode_window, decode_overlap=mplan.decode_overlap)
    with tempfile.TemporaryDirectory() as tmp:
        gen = dataclasses.replace(gen, output_dir=tmp)
        cfg = dataclasses.replace(cfg, generate=gen)
        model_set = load_weights(gen.weights, base=cfg.model, device=str(device))
        start = base if device.type == "cpu" else _measure_start(device)
        if device.type == "cpu":
            reset_rss_peak()
        t0 = time.perf_counter()
        with applied(mplan, model_set, device=device):
            generate(cfg, model_set=model_set)
        seconds = time.perf_counter() - t0
        measured = _measure_end(device, start)
    worst = max(mplan.estimates, key=lambda e: e.device)
    estimated, parts = _without_runtime(worst)
    return {
        "seconds": seconds,
        "estimated": estimated,
        "measured": measured,
        "stage": worst.name,
        "parts": parts,
        "plan": mplan.describe(),
    }


def _import_runtime() -> None:
    """Import what a run imports (MONAI's networks load lazily), so that the baseline holds the libraries: the
    model's ``runtime`` part, which the measurement leaves out as the estimate does."""
    import monai.apps.generation.maisi.networks.autoencoderkl_maisi  # noqa: F401
    import monai.apps.generation.maisi.networks.controlnet_maisi  # noqa: F401
    import monai.apps.generation.maisi.networks.diffusion_model_unet_maisi  # noqa: F401
    import monai.inferers  # noqa: F401
    import nibabel  # noqa: F401
    import scipy.ndimage  # noqa: F401

    import maisi.generation.masks.phantom  # noqa: F401
    import maisi.generation.outputs  # noqa: F401
    import maisi.generation.pipeline  # noqa: F401
    import maisi.generation.preview  # noqa: F401
    import maisi.memory  # noqa: F401


def child(args) -> dict:
    import torch

    _import_runtime()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    run = {"decode": child_decode, "sampling": child_sampling, "generate": child_generate}[args.kind]
    return run(args, device)


def _config_args(kind: str, preset: str, options: dict) -> list[str]:
    out = ["--kind", kind, "--preset", preset]
    for k, v in options.items():
        out += [f"--{k}", str(v)]
    return out


def _merged(report: dict, earlier: list) -> dict:
    out = dict(report)
    out["results"] = sorted([*earlier, *report["results"]], key=lambda r: r.get("index", 0))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", choices=sorted(SUITES), default="cpu")
    p.add_argument("--only", type=int, nargs="*", help="run only these configurations (indices of the suite)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--name", default="memory_model_cpu")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument(
        "--merge", action="store_true", help="keep the other configurations of an earlier results file"
    )
    # one configuration (the child)
    p.add_argument("--kind", help=argparse.SUPPRESS)
    p.add_argument("--preset", default="rflow-ct", help=argparse.SUPPRESS)
    p.add_argument("--latent", default="16", help=argparse.SUPPRESS)
    p.add_argument("--window", default="48", help=argparse.SUPPRESS)
    p.add_argument("--overlap", type=float, default=0.4, help=argparse.SUPPRESS)
    p.add_argument("--splits", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--windows", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--plan", default="", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=128, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--guidance", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.kind:
        print(json.dumps(child(args)))
        return
    report = {"machine": machine(), "args": vars(args), "results": []}
    configs = SUITES[args.suite]
    earlier = []
    previous = Path(__file__).resolve().parent / "results" / f"{args.name}.json"
    if args.merge and previous.is_file():
        earlier = json.loads(previous.read_text())["results"]
    chosen = args.only if args.only is not None else range(len(configs))
    print(
        f"{'#':>2} {'kind':<9} {'preset':<9} {'configuration':<46} {'estimated':>10} {'measured':>10} {'ratio':>6}"
    )
    for i in chosen:
        kind, preset, options = configs[i]
        extra = ["--device", args.device, "--threads", str(args.threads)]
        t0 = time.time()
        r = run_child(__file__, _config_args(kind, preset, options) + extra, timeout=args.timeout)
        r.update(index=i, kind=kind, preset=preset, options=options, wall_s=time.time() - t0)
        earlier = [e for e in earlier if e.get("index") != i]
        report["results"].append(r)
        text = " ".join(f"{k}={v}" for k, v in options.items())
        if "error" in r:
            print(f"{i:>2} {kind:<9} {preset:<9} {text:<46} failed: {r['error']}")
        else:
            r["ratio"] = r["estimated"] / r["measured"]
            print(f"{i:>2} {kind:<9} {preset:<9} {text:<46} {r['estimated'] / 2**30:9.3f}G "
                  f"{r['measured'] / 2**30:9.3f}G {r['ratio']:6.3f}")  # fmt: skip
        write_results(args.name, _merged(report, earlier))  # after every configuration: a long suite keeps it
    report = _merged(report, earlier)
    ok = [r for r in report["results"] if "ratio" in r]
    if ok:
        report["summary"] = {
            "configurations": len(ok),
            "max_over": max(r["ratio"] for r in ok) - 1,
            "max_under": 1 - min(r["ratio"] for r in ok),
            "within_15_percent": all(0.85 <= r["ratio"] <= 1.15 for r in ok),
            "never_more_than_5_percent_below": all(r["ratio"] >= 0.95 for r in ok),
        }
        print(json.dumps(report["summary"]))
    print(f"wrote {write_results(args.name, report)}")


if __name__ == "__main__":
    main()
