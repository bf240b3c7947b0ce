"""The decode the memory plan chooses against the official window setting, side by side, with stitching errors.

One latent (seeded), one official-architecture VAE (seeded random weights), each side in a fresh process, run one
after another; every side decodes with :func:`maisi.performance.accelerate` as ``maisi generate`` does:

``official``
    the official MAISI setting: windows of 48^3 latent voxels overlapping by 0.6666 (8 windows at 256^3), each
    window decoded by the decoder as it is;
``plan``
    :func:`maisi.memory.plan_memory` under the default budget (the memory available now) for the whole generation
    request: one pass over the whole latent (the official whole-volume decode, no stitching) in as few slabs as
    fit, or the fewest, largest windows;
``plan@<budget>`` (``--budgets``)
    the plan under a smaller budget (windows);
``whole``
    the decoder on the whole latent as it is (no slabs): the reference for the slabs' exactness, run only where
    its estimate fits the memory available (``--whole-size`` decodes a smaller latent for this check).

Errors are in the decoder's [0, 1] output units (x 2000 = HU) against the plan's one-pass decode.

    python benchmarks/bench_decode_plan.py --size 256 --name decode_plan_256
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, reset_rss_peak, rss, rss_peak, run_child, write_results  # noqa: E402


def child(args) -> dict:
    import dataclasses

    import numpy as np
    import torch

    from maisi.config import preset
    from maisi.latents import LatentCodec
    from maisi.memory import DecodeSettings, decoding_in_slabs, parse_memory, plan_memory
    from maisi.networks import build_vae
    from maisi.performance import Speedups, accelerate
    from maisi.runtime import compute_dtype

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = preset("rflow-ct")
    size = args.whole_size if args.side.endswith("-small") else args.size
    d = cfg.model.vae.downsample
    latent = (size // d,) * 3
    gen = dataclasses.replace(cfg.generate, output_size=(size,) * 3, dtype=args.dtype, device=args.device)
    plan = None
    if args.side == "official":
        settings = DecodeSettings((48, 48, 48), 0.6666, 0)
    elif args.side == "slabs-small":
        settings = DecodeSettings(latent, 0.0, args.small_splits)
    elif args.side.startswith("plan"):
        budget = parse_memory(args.side.split("@", 1)[1]) if "@" in args.side else None
        plan = plan_memory(cfg.model, gen, budget_bytes=budget, device=args.device)
        settings = plan.decode
    else:  # the decoder as it is on the whole latent
        settings = DecodeSettings(latent, 0.0, 0)  # num_splits 0: the decoder's own forward
    torch.manual_seed(args.seed)
    vae = build_vae(cfg.model.vae).eval().to(device)
    codec = LatentCodec(
        vae=vae, scale_factor=1.0, decode_window=settings.window, decode_overlap=settings.overlap, device=device,
        dtype=compute_dtype(args.dtype),
    )  # fmt: skip
    z = torch.randn(1, 4, *latent, generator=torch.Generator().manual_seed(args.seed + 1))
    base = rss()
    speedups = Speedups() if device.type == "cpu" and args.dtype == "float32" else None
    with accelerate([vae], speedups, device=device):
        slabs = (
            decoding_in_slabs(vae, settings.num_splits) if settings.num_splits else contextlib.nullcontext()
        )
        with slabs:
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            reset_rss_peak()
            t0 = time.perf_counter()
            image = codec.decode(z)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
    out = {
        "side": args.side,
        "size": size,
        "settings": settings.describe(latent),
        "seconds": seconds,
        "peak_rss": rss_peak(),
        "working_rss": rss_peak() - base,
        "cuda_peak": torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
    }
    if plan is not None:
        out["plan"] = plan.describe()
    np.save(args.out, image[0, 0].float().cpu().numpy())
    return out


def _errors(a, b) -> dict:
    import numpy as np

    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "max_abs_hu": float(diff.max() * 2000),
        "mean_abs_hu": float(diff.mean() * 2000),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256, help="output size (cubic)")
    p.add_argument("--budgets", nargs="*", default=[], help="extra plan budgets, e.g. 8GB")
    p.add_argument("--whole-size", type=int, default=128, help="size of the slabs-vs-whole exactness check")
    p.add_argument("--small-splits", type=int, default=8, help="slabs of that check")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sides", nargs="*", default=None, help="run only these sides")
    p.add_argument("--name", default="decode_plan_256")
    p.add_argument("--side", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.side:
        print(json.dumps(child(args)))
        return
    import numpy as np

    sides = args.sides or ["plan", "official", *[f"plan@{b}" for b in args.budgets], "whole", "whole-small",
                           "slabs-small"]  # fmt: skip
    common = ["--size", str(args.size), "--whole-size", str(args.whole_size),
              "--small-splits", str(args.small_splits), "--device", args.device,
              "--dtype", args.dtype, "--threads", str(args.threads), "--seed", str(args.seed)]  # fmt: skip
    report = {"machine": machine(), "args": vars(args), "sides": {}}
    with tempfile.TemporaryDirectory() as tmp:
        images = {}
        for side in sides:
            if side == "whole":
                from maisi.config import preset
                from maisi.memory import available_memory
                from maisi.memory.slabs import decoder_peak

                cfg = preset("rflow-ct")
                need = (
                    decoder_peak(cfg.model.vae, (args.size // 4,) * 3, 1, resident=True) * 1.2
                )  # MONAI's own
                if need > available_memory(args.device):
                    report["sides"]["whole"] = {
                        "skipped": f"needs ~{need / 2**30:.1f} GiB, more than is available"
                    }
                    print(f"whole: skipped (needs ~{need / 2**30:.1f} GiB)")
                    continue
            out = str(Path(tmp) / f"{side}.npy")
            t0 = time.time()
            r = run_child(__file__, [*common, "--side", side, "--out", out], prompt_release=False)
            r["wall_s"] = time.time() - t0
            report["sides"][side] = r
            if "error" in r:
                print(f"{side}: failed: {r['error']}")
                continue
            images[side] = np.load(out)
            print(
                f"{side:>12}: {r['seconds']:8.1f} s, {r['settings']}, peak RSS {r['peak_rss'] / 2**30:.2f} GiB"
            )
            write_results(args.name, report)
        if "whole-small" in images and "slabs-small" in images:
            # the slabs' exactness where the decoder fits whole
            report["slabs_vs_whole"] = _errors(images["slabs-small"], images["whole-small"])
            report["slabs_vs_whole"].update(size=args.whole_size, num_splits=args.small_splits)
        ref = images.get("plan")
        if ref is not None:
            report["errors_vs_plan"] = {
                s: _errors(img, ref) for s, img in images.items() if img.shape == ref.shape
            }
            if "official" in report["sides"] and "seconds" in report["sides"]["official"]:
                report["time_ratio_plan_vs_official"] = (
                    report["sides"]["plan"]["seconds"] / report["sides"]["official"]["seconds"]
                )
    print(json.dumps({k: report[k] for k in ("errors_vs_plan", "time_ratio_plan_vs_official", "slabs_vs_whole")
                      if k in report}, indent=1))  # fmt: skip
    print(f"wrote {write_results(args.name, report)}")


if __name__ == "__main__":
    main()
