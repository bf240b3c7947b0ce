"""Peak memory of maisi's tiled decode (``LatentCodec.decode``) at two output sizes with one fixed window.

Working memory of a tiled decode = the output buffer + the latent + one window's VAE activations + the blending of
one tile; the window's activations do not depend on the output size, so the peak should grow only by the output
buffer. Each size runs in a fresh process; the output buffer is preallocated and touched before the measurement,
so ``baseline`` holds weights, latent and output, and ``working`` = peak - baseline is what decoding adds.

``--windows K`` decodes only the first K windows of the plan (the rest reuse the same memory; every window of a
cubic plan has the same shape): with the official VAE on a CPU a 48^3-latent window (a 192^3 image tile) takes
minutes, and 512^3 has 216 of them. ``--preset tiny`` decodes every window in seconds, which checks that the peak
after K windows is the peak of the whole decode.

    python benchmarks/bench_decode_memory.py --preset rflow-ct --sizes 256 512 --windows 1 --name decode_memory_official
    python benchmarks/bench_decode_memory.py --preset tiny --sizes 256 512 --name decode_memory_tiny
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Stage, fmt_bytes, machine, run_child, write_results  # noqa: E402


def parse_size(text: str) -> tuple[int, int, int]:
    """``"512"`` -> (512, 512, 512); ``"512x512x768"`` -> (512, 512, 768)."""
    parts = [int(v) for v in str(text).lower().split("x")]
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"size must be N or XxYxZ, got {text!r}")
    return parts[0], parts[1], parts[2]


def _size_name(text: str) -> str | int:
    x, y, z = parse_size(text)
    return x if x == y == z else f"{x}x{y}x{z}"


def child(args) -> dict:
    import torch

    import maisi.latents as latents_module
    from maisi.config import preset
    from maisi.latents import LatentCodec
    from maisi.networks import build_vae
    from maisi.performance import Speedups, accelerate

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = preset(args.preset)
    device = torch.device(args.device)
    vae = build_vae(cfg.model.vae).eval()
    codec = LatentCodec.from_config(
        cfg, vae=vae, decode_window=(args.window,) * 3, decode_overlap=args.overlap, device=device
    )
    d = codec.downsample
    shape = parse_size(args.size)
    n = tuple(s // d for s in shape)
    full_plan = latents_module.tile_plan(n, codec.decode_window, codec.decode_overlap)
    if args.windows:
        original = latents_module.tile_plan
        latents_module.tile_plan = lambda *a, **k: original(*a, **k)[: args.windows]
    latent = torch.randn(1, codec.latent_channels, *n, generator=torch.Generator().manual_seed(args.seed))
    out = torch.empty(1, cfg.model.vae.out_channels, *shape)
    out.zero_()  # resident before the baseline
    rec: dict = {}
    speedups = None if args.plain else Speedups()
    with Stage(rec, "decode", device), accelerate([vae], speedups, device=device):
        codec.decode(latent, out=out, tiled=True)
    measured = rec["decode"]
    seconds, baseline, peak = measured["seconds"], measured["rss_baseline"], measured["rss_peak"]
    done = min(args.windows or len(full_plan), len(full_plan))
    return {
        "size": _size_name(args.size),
        "latent": n[0] if len(set(n)) == 1 else list(n),
        "windows_decoded": done,
        "windows_in_plan": len(full_plan),
        "seconds": seconds,
        "seconds_per_window": seconds / done,
        "baseline_rss": baseline,
        "peak_rss": peak,
        "working_rss": peak - baseline,
        "output_bytes": out.numel() * out.element_size(),
        "cuda_peak": measured.get("cuda_peak"),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="rflow-ct", help="VAE architecture (official: rflow-ct)")
    p.add_argument(
        "--sizes",
        nargs="+",
        default=["256", "512"],
        help="output sizes: N (cubic) or XxYxZ, e.g. 512x512x768",
    )
    p.add_argument(
        "--window", type=int, default=48, help="decode window, latent voxels per axis (official 48)"
    )
    p.add_argument("--overlap", type=float, default=0.6666, help="decode overlap (official 0.6666)")
    p.add_argument("--windows", type=int, help="decode only the first K windows of each plan")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plain", action="store_true", help="no speed-ups (maisi.performance.PLAIN)")
    p.add_argument("--name", default="decode_memory", help="results file benchmarks/results/<name>.json")
    p.add_argument("--_size", dest="size", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for size in args.sizes:
        parse_size(size)  # a bad size fails here, before any child starts
    if args.size:
        print(json.dumps(child(args)))
        return
    passthrough = ["--preset", args.preset, "--window", str(args.window), "--overlap", str(args.overlap),
                   "--device", args.device, "--threads", str(args.threads), "--seed", str(args.seed)]  # fmt: skip
    if args.windows:
        passthrough += ["--windows", str(args.windows)]
    if args.plain:
        passthrough.append("--plain")
    report = {
        "machine": machine(),
        "args": {k: v for k, v in vars(args).items() if k != "size"},
        "results": [],
    }
    print(f"{args.preset} VAE, window {args.window}^3 latent, overlap {args.overlap}, device {args.device}")
    print(f"{'size':>11} {'windows':>9} {'s/window':>9} {'baseline':>10} {'peak':>10} {'working':>10} {'output':>10} "
          f"{'CUDA peak':>10}")  # fmt: skip
    for size in args.sizes:
        r = run_child(__file__, [*passthrough, "--_size", str(size)])
        report["results"].append(r)
        if "error" in r:
            print(f"{size:>11} failed: {r['error']}")
            continue
        print(f"{size:>11} {r['windows_decoded']:>4}/{r['windows_in_plan']:<4} {r['seconds_per_window']:9.1f} "
              f"{fmt_bytes(r['baseline_rss']):>10} {fmt_bytes(r['peak_rss']):>10} {fmt_bytes(r['working_rss']):>10} "
              f"{fmt_bytes(r['output_bytes']):>10} {fmt_bytes(r['cuda_peak']):>10}")  # fmt: skip
    ok = [r for r in report["results"] if "error" not in r]
    if len(ok) >= 2:
        first, last = ok[0], ok[-1]
        growth = {k: last[k] / first[k] - 1 for k in ("peak_rss", "working_rss")}
        if first["cuda_peak"]:
            growth["cuda_peak"] = last["cuda_peak"] / first["cuda_peak"] - 1
        report["growth"] = growth
        print(f"growth {first['size']} -> {last['size']}: "
              + ", ".join(f"{k} {v * 100:+.1f}%" for k, v in growth.items()))  # fmt: skip
    path = write_results(args.name, report)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
