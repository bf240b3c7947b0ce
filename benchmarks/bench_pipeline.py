"""Side-by-side timing and peak memory of maisi's generation pipeline and the official MAISI way of running it.

Sides (each in a fresh process, same seeded random weights, same label map, same initial noise, same steps):

``reference``
    MONAI's MAISI classes used the official way: ``ControlNetMaisi`` + ``DiffusionModelUNetMaisi`` called at every
    step of MONAI's ``RFlowScheduler`` loop, the VAE with its official ``num_splits`` and ``MaisiGroupNorm3D``,
    decoded by MONAI's ``SlidingWindowInferer`` with the official settings (window 48^3 latent, overlap 0.6666,
    Gaussian, whole-volume decode when the latent fits one window). CPU: fp32, no flash attention, fp32 group norm
    (``norm_float16=True`` fails there). CUDA: fp16 autocast, flash attention, fp16 group norm. The mask is
    prepared with MONAI transforms (load, RAS, resample nearest, pad/crop).
``maisi``
    ``maisi.generation.generate(..., write=False)`` with :class:`maisi.performance.Speedups` (default), the mask from
    ``FileMaskSource``, files by ``maisi.generation.outputs.write_sample``.
``maisi-plain`` (``--plain``)
    the same with every speed-up off (what the fused VAE and SDPA alone give).

Stages: ``mask`` (mask preparation), ``step`` (one ControlNet+UNet call, the second of two), ``loop`` (the whole
sampling loop), ``decode`` (VAE decode), ``write`` (image + label NIfTI). ``end_to_end`` = mask + loop + decode +
write (+ post-processing), measured back to back. ``--loop-steps K`` runs K steps and scales the loop to
``--steps`` (marked ``extrapolated``): a step costs the same at every t.

    python benchmarks/bench_pipeline.py --preset rflow-ct --sizes 128 --steps 30 --threads 2 --name cpu_rflow_128
    python benchmarks/bench_pipeline.py --preset tiny --sizes 64 --steps 5 --name tiny_smoke --plain
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    ROOT,
    Stage,
    fmt_bytes,
    machine,
    maisi_model_set,
    reference_networks,
    rss_peak,
    run_child,
    write_results,
)

MASK = ROOT / "tests" / "data" / "example_seg.nii.gz"
STAGES = ("mask", "step", "loop", "decode", "write", "end_to_end")


# ------------------------------------------------------------------------------------------------ reference side


def reference_mask(path: Path, size, spacing):
    """Official-style mask preparation with MONAI transforms: load, RAS, resample (nearest), pad/crop to size."""
    from monai.transforms import (
        Compose,
        EnsureChannelFirst,
        LoadImage,
        Orientation,
        ResizeWithPadOrCrop,
        Spacing,
    )

    prep = Compose(
        [
            LoadImage(image_only=True),
            EnsureChannelFirst(),
            Orientation(axcodes="RAS"),
            Spacing(pixdim=spacing, mode="nearest"),
            ResizeWithPadOrCrop(spatial_size=size),
        ]
    )
    return prep(str(path))


def reference_step_inputs(nets, label, spacing, device, half: bool):
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from reference_pipeline import binarize_labels

    dtype = torch.float16 if half else torch.float32  # the official script casts conditioning to fp16 on GPU
    control = binarize_labels(torch.as_tensor(label).long()[None, None]).to(device, dtype)
    spacing_tensor = (torch.tensor([list(map(float, spacing))]) * 1e2).to(device, dtype)
    modality = torch.ones((1,), dtype=torch.long, device=device)
    return control, spacing_tensor, modality


def reference_call(nets, latents, t, control, spacing_tensor, modality):
    """One official ControlNet + UNet evaluation."""
    import torch

    t_in = torch.Tensor((t,)).to(latents.device)
    down, mid = nets.controlnet(x=latents, timesteps=t_in, controlnet_cond=control, class_labels=modality)
    return nets.diffusion_unet(
        x=latents,
        timesteps=t_in,
        spacing_tensor=spacing_tensor,
        class_labels=modality,
        down_block_additional_residuals=down,
        mid_block_additional_residual=mid,
    )


def reference_loop(nets, scheduler, latents, steps, control, spacing_tensor, modality):
    """The official rectified-flow loop (``scripts/sample.py``): ``step(out, t, x, next_t)``."""
    import torch

    scheduler.set_timesteps(
        num_inference_steps=steps, input_img_size_numel=torch.prod(torch.tensor(latents.shape[2:]))
    )
    timesteps = scheduler.timesteps
    next_timesteps = torch.cat((timesteps[1:], torch.tensor([0], dtype=timesteps.dtype)))
    for t, next_t in zip(timesteps, next_timesteps):
        out = reference_call(nets, latents, t, control, spacing_tensor, modality)
        latents, _ = scheduler.step(out, t, latents, next_t)
    return latents


def reference_decode(nets, latents, window, overlap, device):
    """Official decode: ``dynamic_infer`` with MONAI's SlidingWindowInferer, assembled on the CPU."""
    from reference_pipeline import ScaledDecoder, dynamic_infer

    model = ScaledDecoder(nets.autoencoder, nets.scale_factor)
    if device.type == "cpu":
        return dynamic_infer(model, latents, roi_size=window, overlap=overlap)
    import math

    from monai.inferers import SlidingWindowInferer

    if math.prod(latents.shape[2:]) <= math.prod(window):
        return model(latents).cpu()
    inferer = SlidingWindowInferer(
        roi_size=[min(w, s) for w, s in zip(window, latents.shape[2:])],
        sw_batch_size=1,
        overlap=overlap,
        mode="gaussian",
        sw_device=device,
        device="cpu",
    )
    return inferer(latents, model)


def run_reference(args, cfg, nets, label, affine, noise, rec, out_dir: Path):
    import nibabel as nib
    import numpy as np
    import torch
    from common import gpu_reference_networks  # noqa: F401 (CUDA only)

    device = torch.device(args.device)
    half = device.type == "cuda"
    if half:
        nets = gpu_reference_networks(nets, cfg.model)
    for m in (nets.autoencoder, nets.diffusion_unet, nets.controlnet):
        m.to(device).eval()
    sys.path.insert(0, str(ROOT / "tests"))
    from maisi.latents import OFFICIAL_DECODE_OVERLAP, OFFICIAL_DECODE_WINDOW
    from reference_pipeline import official_scheduler

    scheduler = official_scheduler("config_network_rflow.json")
    gen = cfg.generate
    amp = torch.autocast("cuda", dtype=torch.float16) if half else torch.autocast("cpu", enabled=False)
    size, spacing = tuple(label.shape), tuple(gen.spacing)
    with torch.no_grad(), amp:
        with Stage(rec, "mask", device):
            reference_mask(MASK, size, spacing)
        control, spacing_tensor, modality = reference_step_inputs(nets, label, spacing, device, half)
        latents = noise.to(device, torch.float16 if half else torch.float32)
        reference_call(nets, latents, torch.tensor(500.0), control, spacing_tensor, modality)
        with Stage(rec, "step", device):
            reference_call(nets, latents, torch.tensor(500.0), control, spacing_tensor, modality)
        with Stage(rec, "loop", device):
            latents = reference_loop(
                nets, scheduler, latents, args.loop_steps, control, spacing_tensor, modality
            )
        with Stage(rec, "decode", device):
            image = reference_decode(nets, latents, OFFICIAL_DECODE_WINDOW, OFFICIAL_DECODE_OVERLAP, device)
        with Stage(rec, "post", device):
            unit = torch.clip(image.float(), 0.0, 1.0)[0, 0]
            body = torch.as_tensor(label) != 0
            unit = torch.where(body, unit, torch.tensor(0.0))
            hu = np.rint((unit * 2000.0 - 1000.0).numpy()).astype(np.int16)
        with Stage(rec, "write", device):
            nib.save(nib.Nifti1Image(hu, affine), out_dir / "reference_image.nii.gz")
            nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), out_dir / "reference_label.nii.gz")
    return unit.numpy()


# ------------------------------------------------------------------------------------------------ maisi side


def run_maisi(args, cfg, model_set, noise, rec, out_dir: Path, plain: bool):
    import torch

    from maisi.generation import generate
    from maisi.generation.masks import FileMaskSource
    from maisi.generation.outputs import sample_paths, write_sample
    from maisi.generation.synthesis import build_denoiser
    from maisi.performance import PLAIN, Speedups, accelerate

    speedups = PLAIN if plain else Speedups()
    device = torch.device(args.device)
    gen = cfg.generate
    with Stage(rec, "mask", device):
        source = FileMaskSource(MASK, size=gen.output_size, spacing=gen.spacing)
    mask = source(0)
    for name in ("unet", "controlnet", "vae"):
        model_set[name].to(device).eval()
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[gen.dtype]
    denoiser = build_denoiser(
        model_set, [mask], modality=1, guidance=0.0, requested_regions=[], device=device, dtype=dtype
    )
    x = noise.to(device)
    t = torch.full((1,), 500.0, device=device)
    with (
        accelerate([model_set["unet"], model_set["controlnet"]], speedups, device=device),
        torch.inference_mode(),
    ):
        denoiser(x, t)
        with Stage(rec, "step", device):
            denoiser(x, t)
    cfg.generate = dataclasses.replace(gen, steps=args.loop_steps)
    with Stage(rec, "generate", device):
        (sample,) = generate(
            cfg,
            model_set=model_set,
            initial_noise=noise,
            write=False,
            mask_source=source,
            speedups=speedups,
            return_unit=True,
        )
    timings = sample.metadata["timings_s"]
    rec["loop"] = {"seconds": timings["sampling_s"], "rss_peak": rec["generate"]["rss_peak"]}
    rec["decode"] = {"seconds": timings["decode_s"], "rss_peak": rec["generate"]["rss_peak"]}
    if "cuda_peak" in rec["generate"]:
        rec["loop"]["cuda_peak"] = rec["decode"]["cuda_peak"] = rec["generate"]["cuda_peak"]
    rec["post"] = {"seconds": rec["generate"]["seconds"] - timings["sampling_s"] - timings["decode_s"]}
    with Stage(rec, "write", device):
        write_sample(
            sample_paths(out_dir, 0, preview=False),
            image=sample.image,
            label=sample.label,
            affine=sample.affine,
            spacing=sample.spacing,
            sidecar=sample.metadata,
        )
    return sample.unit


# ------------------------------------------------------------------------------------------------ child


def child(args) -> dict:
    import numpy as np
    import torch

    from maisi.config import preset
    from maisi.generation.masks import FileMaskSource

    torch.set_num_threads(args.threads)
    cfg = preset(args.preset)
    size = (args.size,) * 3
    cfg.generate = dataclasses.replace(
        cfg.generate,
        output_size=size,
        spacing=tuple(args.spacing),
        steps=args.loop_steps,
        qc=False,
        preview=False,
        device=args.device,
        dtype=args.dtype,
    )
    nets = reference_networks(cfg.model, seed=args.seed)
    # one label map for both sides (maisi ids; the reference side times its own preparation of the same file)
    label_source = FileMaskSource(MASK, size=size, spacing=tuple(args.spacing))
    sample = label_source(0)
    d = 2 ** (len(cfg.model.vae.num_channels) - 1)
    noise = torch.randn(
        (1, cfg.model.vae.latent_channels, *(s // d for s in size)),
        generator=torch.Generator().manual_seed(args.seed),
    )
    rec: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        if args.side == "reference":
            unit = run_reference(args, cfg, nets, sample.label, sample.affine, noise, rec, Path(tmp))
        else:
            model_set = maisi_model_set(cfg.model, nets)
            del nets  # only maisi's copy of the weights stays resident
            gc.collect()
            unit = run_maisi(args, cfg, model_set, noise, rec, Path(tmp), plain=args.side == "maisi-plain")
        total = time.perf_counter() - start
    rec["end_to_end"] = {
        "seconds": sum(rec[k]["seconds"] for k in ("mask", "loop", "decode", "post", "write")),
        "rss_peak": max(rec[k].get("rss_peak", 0) for k in rec),
    }
    if args.dump:
        np.save(args.dump, unit.astype(np.float32))
    return {
        "side": args.side,
        "size": args.size,
        "stages": rec,
        # each Stage restarts VmHWM, so the whole run's peak is the largest stage peak (or what came after them)
        "process_rss_peak": max([rss_peak(), *(st.get("rss_peak", 0) for st in rec.values())]),
        "child_seconds": total,
    }


# ------------------------------------------------------------------------------------------------ parent


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="rflow-ct", help="network architecture (official: rflow-ct)")
    p.add_argument("--sizes", type=int, nargs="+", default=[128], help="cubic output sizes")
    p.add_argument("--spacing", type=float, nargs=3, default=[1.5, 1.5, 2.0])
    p.add_argument("--steps", type=int, default=30, help="sampler steps reported")
    p.add_argument(
        "--loop-steps", type=int, help="steps actually run (default --steps; fewer = extrapolated)"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--dtype", default="float32", help="maisi's compute dtype (the reference: fp32 CPU, fp16 CUDA)"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plain", action="store_true", help="also run maisi with every speed-up off")
    p.add_argument("--sides", nargs="+", help="run only these sides (reference, maisi, maisi-plain)")
    p.add_argument("--name", default="pipeline", help="results file benchmarks/results/<name>.json")
    p.add_argument("--_side", dest="side", help=argparse.SUPPRESS)
    p.add_argument("--_size", dest="size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--_dump", dest="dump", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.loop_steps = args.loop_steps or args.steps
    if args.side:
        print(json.dumps(child(args)))
        return

    sides = args.sides or ["reference", "maisi"] + (["maisi-plain"] if args.plain else [])
    scale = args.steps / args.loop_steps
    report = {
        "machine": machine(),
        "args": {k: v for k, v in vars(args).items() if k not in ("side", "size", "dump")},
    }
    report["extrapolated"] = scale != 1
    report["results"] = []
    common_args = ["--preset", args.preset, "--spacing", *map(str, args.spacing), "--steps", str(args.steps),
                   "--loop-steps", str(args.loop_steps), "--device", args.device, "--dtype", args.dtype,
                   "--threads", str(args.threads), "--seed", str(args.seed)]  # fmt: skip
    print(
        f"machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, torch {report['machine']['torch']}"
    )
    print(
        f"preset {args.preset}, {args.steps} steps"
        + (f" (loop run with {args.loop_steps}, scaled)" if scale != 1 else "")
    )
    for size in args.sizes:
        runs = {}
        with tempfile.TemporaryDirectory() as tmp:
            for side in sides:
                dump = str(Path(tmp) / f"{side}.npy")
                r = run_child(
                    __file__,
                    [*common_args, "--_side", side, "--_size", str(size), "--_dump", dump],
                    prompt_release=False,  # timings under the default allocator, as users run
                )
                if "error" not in r:
                    st = r["stages"]
                    st["loop"]["seconds"] *= scale
                    st["end_to_end"]["seconds"] += st["loop"]["seconds"] * (1 - 1 / scale)
                    r["unit"] = dump
                runs[side] = r
                load = r["loadavg_before"][0], r["loadavg_after"][0]
                print(
                    f"  {size}^3 {side}: "
                    + (r.get("error") or f"done in {r['child_seconds']:.0f} s")
                    + f" (load {load[0]:.1f} -> {load[1]:.1f})"
                )
            _agreement(runs)
        report["results"].append({"size": size, "runs": runs, "ratios": _print_table(size, runs)})
    path = write_results(args.name, report)
    print(f"wrote {path}")


def _agreement(runs: dict) -> None:
    import numpy as np

    if "unit" not in runs.get("reference", {}):
        return
    ref = np.load(runs["reference"]["unit"])
    for side, r in runs.items():
        if side != "reference" and "unit" in r:
            r["max_abs_diff_vs_reference"] = float(np.abs(np.load(r["unit"]) - ref).max())
    for r in runs.values():
        r.pop("unit", None)


def _print_table(size: int, runs: dict) -> dict:
    ref = runs.get("reference", {}).get("stages")
    others = [s for s in runs if s != "reference" and "stages" in runs[s]]
    head = f"{'stage':>11} {'reference s':>12}" + "".join(f" {s + ' s':>13} {'ratio':>6}" for s in others)
    print(f"\n{size}^3\n{head}")
    ratios: dict = {}
    for stage in STAGES:
        line = f"{stage:>11} " + (f"{ref[stage]['seconds']:12.2f}" if ref else f"{'-':>12}")
        for s in others:
            v = runs[s]["stages"][stage]["seconds"]
            ratio = v / ref[stage]["seconds"] if ref else None
            ratios.setdefault(s, {})[stage] = ratio
            line += f" {v:13.2f} " + (f"{ratio:6.2f}" if ratio is not None else f"{'-':>6}")
        print(line)
    print(f"{'peak RSS':>11} " + (f"{fmt_bytes(runs['reference']['process_rss_peak']):>12}" if ref else f"{'-':>12}")
          + "".join(f" {fmt_bytes(runs[s]['process_rss_peak']):>13} {'':>6}" for s in others))  # fmt: skip
    for s in others:
        if "max_abs_diff_vs_reference" in runs[s]:
            print(f"{s}: max |unit image - reference| = {runs[s]['max_abs_diff_vs_reference']:.2e}")
    return ratios


if __name__ == "__main__":
    main()
