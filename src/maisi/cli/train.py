"""``maisi train {vae,diffusion,controlnet,mask-vae,mask-diffusion,segmenter}``: train or fine-tune one network.

Re-running the same command resumes from the run folder's newest checkpoint. Under ``torchrun`` the same command
trains with DDP.
"""

from __future__ import annotations

import argparse

from maisi.cli.common import add_config_args, add_progress_args, print_config, resolve_config, show_progress

TASKS = ("vae", "diffusion", "controlnet", "mask-vae", "mask-diffusion", "segmenter")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a VAE, diffusion UNet, ControlNet, the mask-generation models or the segmenter (resumable, DDP)",
        description="Train one MAISI network. Re-run the same command to resume; use torchrun for several "
        "processes. Prints 'final: step=N val_loss=X' at the end (also written to RUN_DIR/final.txt).",
    )
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)
    for task in TASKS:
        t = tasks.add_parser(task, help=f"train the {HELP[task]}")
        _add_arguments(t)
        t.set_defaults(func=run)


HELP = {
    "vae": "image VAE (on images)",
    "diffusion": "latent diffusion UNet (on cached latents)",
    "controlnet": "ControlNet on label maps (on cached latents with labels; --init-from the UNet)",
    "mask-vae": "mask VAE (on label maps)",
    "mask-diffusion": "mask diffusion UNet (on label maps; --init-from the mask VAE)",
    "segmenter": "consistency segmenter (model.segmenter, on image/label pairs in MAISI ids)",
}


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        metavar="PATH",
        help="phantom/prepared folder or datalist JSON (vae, mask-vae, mask-diffusion); "
        "latents folder from 'maisi encode' (diffusion, controlnet)",
    )
    p.add_argument(
        "--run-dir", metavar="DIR", help="run folder: config, TensorBoard logs, checkpoints, model/"
    )
    p.add_argument("--max-steps", type=int, metavar="N", help="optimiser steps in total")
    p.add_argument("--seed", type=int, metavar="S", help="seed of initial weights, data order and noise")
    p.add_argument(
        "--init-from",
        metavar="DIR",
        help="model set to start from (required: the UNet for controlnet, the mask VAE for mask-diffusion)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    add_progress_args(p)
    add_config_args(p)


def run(args: argparse.Namespace) -> int:
    options = {"task": args.task}
    for key, value in (
        ("data", args.data),
        ("run_dir", args.run_dir),
        ("max_steps", args.max_steps),
        ("seed", args.seed),
        ("init_from", args.init_from),
    ):
        if value is not None:
            options[key] = value
    cfg = resolve_config(args, extra={"train": options})
    if args.dry_run:
        print_config(cfg)
        return 0
    from maisi.training import train

    train(cfg, device=args.device, progress=show_progress(args))
    return 0
