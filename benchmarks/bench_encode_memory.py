"""Peak memory of ``maisi encode`` (``encode_dataset`` over a ``LatentCodec``) on one synthetic CT volume per size.

Each size runs in a fresh process, which (1) builds the preset's VAE with random weights (``--preset rflow-ct`` is the
official architecture; memory does not depend on the weights), (2) writes a synthetic CT volume as ``maisi prepare``
does (int16 HU, ``.nii.gz``, 1 mm spacing) and a one-entry datalist into a temporary folder, then (3) measures the
call chain of ``maisi encode``: ``LatentCodec.from_config(cfg, vae=..., device=...)`` and
``encode_dataset(datalist=..., codec=..., output_dir=..., progress=False)`` under ``torch.no_grad()``, with the
config's ``data.encode_window`` / ``data.encode_overlap`` unless ``--window`` / ``--overlap`` override them.
``baseline`` is the RSS just before ``encode_dataset`` (weights loaded, no volume read yet), ``peak`` the RSS
high-water mark of the call (and the CUDA peak with ``--device cuda``), ``working`` = peak - baseline: reading and
converting the volume, the latent output buffers, the weight sum and one window's VAE activations.

``--windows K`` runs only the first K windows of the tile plan: the child wraps the codec's per-window encode
(``LatentCodec._encode_window``, on the instance, nothing in ``src/maisi`` changes) and stops the call with a private
exception before window K+1 (so nothing is written). The volume is read, converted to [0, 1] and the output
buffers allocated BEFORE the first window, so the peak after K windows already covers them; the remaining windows
reuse the same memory (every window of the plan has the same shape). ``--windows 0`` stops at the first window:
its peak is reading and converting the volume alone. With the official VAE on a CPU one 64^3
window takes seconds and 512x512x256 has hundreds of them; ``--preset tiny`` runs every window quickly, which
checks that the peak after K windows is the peak of the whole encode.

    python benchmarks/bench_encode_memory.py --preset rflow-ct --size 512 512 256 --windows 2 --threads 1 \
        --name encode_memory_official_512x512x256
    python benchmarks/bench_encode_memory.py --preset tiny --size 128 128 128 --name encode_memory_tiny_full
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Stage, fmt_bytes, machine, rss, run_child, write_results  # noqa: E402


class _StopAfterWindows(Exception):
    """Raised by the wrapped per-window encode once ``--windows`` windows have run."""


def synthetic_ct(size: tuple[int, int, int]):
    """A smooth body-like CT volume in HU (int16, as ``maisi prepare`` stores CT): air outside an ellipsoid,
    soft tissue with a slow texture and a denser core inside."""
    import numpy as np

    x, y, z = (np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in size)
    x, y, z = x[:, None, None], y[None, :, None], z[None, None, :]
    r2 = (x / 0.9) ** 2 + (y / 0.7) ** 2 + (z / 1.1) ** 2
    hu = 40.0 + 150.0 * np.sin(6.0 * x) * np.cos(5.0 * y) * np.cos(3.0 * z)
    hu = np.where(r2 < 0.15, 700.0, hu)
    hu = np.where(r2 < 1.0, hu, -1000.0)
    return hu.astype(np.int16)


def child(args) -> dict:
    import gc
    import tempfile

    import numpy as np
    import safetensors.torch  # noqa: F401  (imported lazily by encode_dataset; load it outside the measurement)
    import torch

    from maisi.config import preset
    from maisi.data.datalist import write_datalist
    from maisi.data.encode import encode_dataset
    from maisi.data.nifti import save_nifti
    from maisi.latents import LatentCodec, tile_plan
    from maisi.networks import build_vae

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    size = tuple(args.size)
    cfg = preset(args.preset)
    device = torch.device(args.device)
    rss_start = rss()
    vae = build_vae(cfg.model.vae).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in vae.parameters())
    options = {}
    if args.window:
        options["encode_window"] = (args.window,) * 3
    if args.overlap is not None:
        options["encode_overlap"] = args.overlap
    codec = LatentCodec.from_config(cfg, vae=vae, device=device, **options)
    latent_size = codec.latent_shape(size)
    tiled = math.prod(size) > math.prod(codec.encode_window)  # encode_posterior's default
    window = tuple(w // codec.downsample for w in codec.encode_window)
    windows_in_plan = len(tile_plan(latent_size, window, codec.encode_overlap)) if tiled else 1

    # count (and cut) the windows: wrap the per-window encode of this codec only
    encode_window = codec._encode_window
    calls, first_window = 0, None

    def counted(image):
        nonlocal calls, first_window
        if first_window is None:
            first_window = time.perf_counter()
        if args.windows is not None and calls >= args.windows:
            raise _StopAfterWindows
        calls += 1
        return encode_window(image)

    codec._encode_window = counted

    with tempfile.TemporaryDirectory(prefix="bench_encode_") as tmp:
        image_path = Path(tmp) / "bench_image.nii.gz"
        save_nifti(image_path, synthetic_ct(size), np.eye(4))
        datalist = write_datalist(
            Path(tmp) / "datalist.json",
            [{"image": str(image_path), "modality": "ct", "dim": list(size), "spacing": [1.0, 1.0, 1.0]}],
        )
        output_dir = Path(tmp) / "latents"
        file_bytes = image_path.stat().st_size
        gc.collect()
        rec: dict = {}
        completed = True
        try:
            with Stage(rec, "encode", device) as stage, torch.no_grad():
                written = encode_dataset(
                    datalist=datalist, codec=codec, output_dir=output_dir, progress=False
                )
        except _StopAfterWindows:
            completed, written = False, []
        measured = rec["encode"]
        seconds, baseline, peak = measured["seconds"], measured["rss_baseline"], measured["rss_peak"]
        read_seconds = (first_window or stage.start + seconds) - stage.start
        outputs = [str(p.name) for p in written if p.is_file()]
    voxels = math.prod(size)
    return {
        "size": list(size),
        "latent": list(latent_size),
        "encode_window": list(codec.encode_window),
        "encode_overlap": codec.encode_overlap,
        "tiled": tiled,
        "windows_run": calls,
        "windows_in_plan": windows_in_plan,
        "completed": completed,
        "outputs": outputs,
        "seconds": seconds,
        "read_seconds": read_seconds,  # from the call to the first window: read, convert, allocate
        "seconds_per_window": (seconds - read_seconds) / max(calls, 1),  # a completed run includes the write
        "rss_start": rss_start,
        "baseline_rss": baseline,
        "peak_rss": peak,
        "working_rss": peak - baseline,
        "weight_bytes": weight_bytes,
        "file_bytes": file_bytes,
        "volume_float32_bytes": 4 * voxels,
        "latent_bytes": 2 * 4 * codec.latent_channels * math.prod(latent_size),  # mean + logvar
        "cuda_peak": measured.get("cuda_peak"),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--preset", default="rflow-ct", help="VAE architecture and data defaults (official: rflow-ct)"
    )
    p.add_argument("--size", type=int, nargs=3, action="append", metavar=("X", "Y", "Z"),
                   help="volume size in voxels (1 mm); repeat for several sizes (default 512 512 256)")  # fmt: skip
    p.add_argument(
        "--window", type=int, help="encode window, image voxels per axis (default: data.encode_window)"
    )
    p.add_argument("--overlap", type=float, help="encode overlap (default: data.encode_overlap)")
    p.add_argument(
        "--windows", type=int, help="encode only the first K windows of each plan (0: read the volume only)"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="encode_memory", help="results file benchmarks/results/<name>.json")
    p.add_argument("--_child", dest="child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.size = args.size[-1]
        print(json.dumps(child(args)))
        return
    sizes = args.size or [[512, 512, 256]]
    passthrough = ["--preset", args.preset, "--device", args.device, "--threads", str(args.threads),
                   "--seed", str(args.seed)]  # fmt: skip
    for flag in ("window", "overlap", "windows"):
        if getattr(args, flag) is not None:
            passthrough += [f"--{flag}", str(getattr(args, flag))]
    report = {
        "machine": machine(),
        "args": {**{k: v for k, v in vars(args).items() if k != "child"}, "size": sizes},
        "results": [],
    }
    print(f"{args.preset} VAE, device {args.device}, {args.threads} thread(s)")
    print(f"{'size':>13} {'windows':>9} {'seconds':>8} {'read s':>7} {'s/window':>9} {'baseline':>10} {'peak':>10} "
          f"{'working':>10} {'volume f32':>10} {'CUDA peak':>10}")  # fmt: skip
    for size in sizes:
        label = "x".join(map(str, size))
        r = run_child(__file__, [*passthrough, "--size", *map(str, size), "--_child"])
        report["results"].append(r)
        if "error" in r:
            print(f"{label:>13} failed: {r['error']}")
            continue
        print(f"{label:>13} {r['windows_run']:>4}/{r['windows_in_plan']:<4} {r['seconds']:8.1f} {r['read_seconds']:7.1f} "
              f"{r['seconds_per_window']:9.2f} "
              f"{fmt_bytes(r['baseline_rss']):>10} {fmt_bytes(r['peak_rss']):>10} {fmt_bytes(r['working_rss']):>10} "
              f"{fmt_bytes(r['volume_float32_bytes']):>10} {fmt_bytes(r['cuda_peak']):>10}")  # fmt: skip
    path = write_results(args.name, report)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
