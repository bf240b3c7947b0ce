"""Peak working memory and time of LatentCodec.decode against the official MAISI decode (MONAI's
SlidingWindowInferer), at several output sizes.

Each measurement runs in a fresh process. Working memory = peak RSS during the call minus RSS just before it
(Linux ``/proc/self/status``; the peak is reset through ``/proc/self/clear_refs``). For ``decode`` the output
buffer is preallocated before the measurement, so the number is memory beyond the result; MONAI allocates its
output inside the call, so its number includes the output (the ``beyond output`` column subtracts it). On a CUDA
device the GPU peak (``torch.cuda.max_memory_allocated``) is reported too. Weights are random: memory and time
do not depend on them.

    python benchmarks/bench_codec_memory.py --preset tiny --sizes 64 128 192
    python benchmarks/bench_codec_memory.py --preset rflow-ct --sizes 128 256 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return 1024 * int(re.search(key + r":\s+(\d+) kB", f.read()).group(1))


def _probe(args: argparse.Namespace) -> dict:
    import torch

    from maisi.config import preset
    from maisi.latents import OFFICIAL_DECODE_OVERLAP, OFFICIAL_DECODE_WINDOW, LatentCodec
    from maisi.networks import build_vae

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = preset(args.preset)
    window = tuple(args.window or cfg.generate.decode_window or OFFICIAL_DECODE_WINDOW)
    overlap = args.overlap if args.overlap is not None else cfg.generate.decode_overlap
    overlap = OFFICIAL_DECODE_OVERLAP if overlap is None else overlap
    device = torch.device(args.device)
    codec = LatentCodec.from_config(
        cfg, vae=build_vae(cfg.model.vae), decode_window=window, decode_overlap=overlap, device=device
    )
    d = codec.downsample
    size = args.size // d
    latent = torch.randn(1, codec.latent_channels, size, size, size)
    warm = torch.randn(1, codec.latent_channels, *(min(w, size) for w in window))
    codec.decode(warm, tiled=True)  # load kernels and warm the allocator outside the measurement
    out = torch.zeros(1, cfg.model.vae.out_channels, *(s * d for s in latent.shape[2:]))
    out_bytes = out.numel() * out.element_size()
    if args.mode == "reference":
        del out
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status("VmRSS")
    start = time.perf_counter()
    if args.mode == "decode":
        codec.decode(latent, out=out)
    else:
        codec.decode_reference(latent)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    working = _status("VmHWM") - before
    from maisi.latents import tile_plan

    windows = len(tile_plan(latent.shape[2:], window, overlap))
    gpu = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    return {"size": args.size, "mode": args.mode, "seconds": seconds, "working": working, "output": out_bytes,
            "windows": windows, "gpu_peak": gpu}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="preset whose VAE and decode settings are used")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 192], help="cubic output sizes")
    parser.add_argument(
        "--window", type=int, nargs=3, help="decode window, latent voxels (default: preset's)"
    )
    parser.add_argument("--overlap", type=float, help="decode overlap (default: preset's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch_threads_default())
    parser.add_argument("--no-reference", action="store_true", help="skip MONAI's SlidingWindowInferer")
    parser.add_argument("--_probe", dest="mode", choices=["decode", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--_size", dest="size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.mode:
        print(json.dumps(_probe(args)))
        return

    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")  # freed tensors leave the RSS at once
    passthrough = ["--preset", args.preset, "--device", args.device, "--threads", str(args.threads)]
    if args.window:
        passthrough += ["--window", *map(str, args.window)]
    if args.overlap is not None:
        passthrough += ["--overlap", str(args.overlap)]
    modes = ["decode"] + ([] if args.no_reference else ["reference"])
    print(f"preset={args.preset} device={args.device} threads={args.threads}")
    print(f"{'size':>6} {'mode':>9} {'windows':>7} {'time s':>8} {'working MiB':>11} {'beyond output':>13} "
          f"{'output MiB':>10} {'GPU peak MiB':>12}")  # fmt: skip
    rows = {}
    for size in args.sizes:
        for mode in modes:
            cmd = [sys.executable, __file__, *passthrough, "--_probe", mode, "--_size", str(size)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(f"{size:>6} {mode:>9} failed: {proc.stderr.strip().splitlines()[-1]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            rows[size, mode] = r
            beyond = r["working"] - (r["output"] if mode == "reference" else 0)
            gpu = f"{r['gpu_peak'] / 2**20:12.1f}" if r["gpu_peak"] is not None else f"{'-':>12}"
            print(f"{size:>6} {mode:>9} {r['windows']:>7} {r['seconds']:>8.2f} {r['working'] / 2**20:>11.1f} "
                  f"{beyond / 2**20:>13.1f} {r['output'] / 2**20:>10.1f} {gpu}")  # fmt: skip
    for size in args.sizes:
        if (size, "decode") in rows and (size, "reference") in rows:
            ours, ref = rows[size, "decode"], rows[size, "reference"]
            print(f"{size}^3: reference/decode working memory {ref['working'] / max(ours['working'], 1):.2f}x "
                  f"(reference includes its output), time {ref['seconds'] / ours['seconds']:.2f}x")  # fmt: skip
    first, last = (rows.get((s, "decode")) for s in (args.sizes[0], args.sizes[-1]))
    if first and last:
        ratio = last["working"] / first["working"]
        print(f"decode working memory {args.sizes[-1]}^3 / {args.sizes[0]}^3: {ratio:.2f}")


def torch_threads_default() -> int:
    return max(1, min(4, os.cpu_count() or 1))


if __name__ == "__main__":
    main()
