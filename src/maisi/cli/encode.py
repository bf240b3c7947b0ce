"""``maisi encode``: VAE-encode a prepared datalist to latents (posterior mean + log-variance), in bounded memory.

Runs under ``torchrun`` too: each rank encodes its share of the datalist.
"""

from __future__ import annotations

import argparse

import torch

from maisi.cli.common import add_config_args, add_progress_args, print_config, resolve_config, show_progress
from maisi.data.encode import encode_dataset
from maisi.latents import LatentCodec
from maisi.networks.model_set import load_model_set
from maisi.runtime import process_env, resolve_device


def register(subparsers) -> None:
    p = subparsers.add_parser("encode", help="encode prepared images to latents with the VAE")
    p.add_argument("--data", required=True, help="datalist JSON written by maisi prepare or maisi phantom")
    p.add_argument(
        "--weights", required=True, help="model-set folder holding the VAE (ours or official layout)"
    )
    p.add_argument("--output-dir", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true")
    add_config_args(p)
    add_progress_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    if args.dry_run:
        print_config(cfg)
        return 0
    env = process_env()
    device = resolve_device(args.device, env.local_rank)  # cuda: this process's GPU under torchrun
    ms = load_model_set(args.weights, components=["vae"], base=cfg.model, device=device)
    cfg.model = ms.config
    codec = LatentCodec.from_config(cfg, vae=ms["vae"], device=device, progress=False)  # one bar: per volume
    rank, world = env.rank, env.world_size
    with torch.no_grad():
        written = encode_dataset(
            datalist=args.data,
            codec=codec,
            output_dir=args.output_dir,
            modality=cfg.data.modality,
            overwrite=args.overwrite,
            rank=rank,
            world_size=world,
            progress=show_progress(args) and rank == 0,
        )
    print(f"encoded {len(written)} volumes into {args.output_dir}")
    return 0
