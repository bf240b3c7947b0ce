"""ControlNet training step: MONAI's MAISI classes as the official scripts train them, against maisi's networks.

One step = ControlNet forward on the label map (8-bit binary encoding at image resolution) and the noisy latent,
the frozen UNet forward with the ControlNet residuals, L1 loss, backward, AdamW step. Both sides hold the same
random weights and get the same inputs; each runs in a fresh child process (timing: default allocator).

- ``reference``: ``ControlNetMaisi`` + ``DiffusionModelUNetMaisi`` built from the preset's network config, with
  the ControlNet's own ``use_checkpointing`` as configured (the official networks: on).
- ``maisi``: ``maisi.networks.build`` (conditioning embedding with fused SiLU and channels-last oneDNN
  convolutions on a CPU) and the preset's ``train.grad_checkpointing`` applied as ``maisi train`` does.

    python benchmarks/bench_train_step.py --preset demo --latent 32 --steps 5 --threads 2
"""

from __future__ import annotations

import argparse
import json
import time

from common import machine, rss_peak, run_child, write_results


def child(args) -> dict:
    import torch
    from common import maisi_model_set, reference_networks

    from maisi.config import preset
    from maisi.conditioning import binarize_labels

    torch.set_num_threads(args.threads)
    cfg = preset(args.preset)
    nets = reference_networks(cfg.model, seed=args.seed)
    if args.side == "reference":
        unet, controlnet = nets.diffusion_unet, nets.controlnet
    else:
        from maisi.training.optim import set_grad_checkpointing

        ms = maisi_model_set(cfg.model, nets)
        unet, controlnet = ms["unet"], ms["controlnet"]
        if cfg.train.grad_checkpointing is not None:
            set_grad_checkpointing(controlnet, cfg.train.grad_checkpointing)
    unet.eval().requires_grad_(False)
    controlnet.train()
    factor = 2 ** (len(cfg.model.controlnet.conditioning_embedding_num_channels) - 1)
    g = torch.Generator().manual_seed(args.seed)
    shape = (args.batch, cfg.model.unet.in_channels, *(args.latent,) * 3)
    x = torch.randn(shape, generator=g)
    target = torch.randn(shape, generator=g)
    label = torch.randint(0, 133, (args.batch, 1, *(args.latent * factor,) * 3), generator=g).float()
    t = torch.full((args.batch,), 500.0)
    kwargs = {}
    if cfg.model.unet.num_class_embeds:
        kwargs["class_labels"] = torch.ones(args.batch, dtype=torch.long)
    unet_kwargs = dict(kwargs)
    if cfg.model.unet.include_spacing_input:
        unet_kwargs["spacing_tensor"] = torch.full((args.batch, 3), 1.5)
    opt = torch.optim.AdamW(controlnet.parameters(), lr=1e-5)

    def step() -> float:
        down, mid = controlnet(x=x, timesteps=t, controlnet_cond=binarize_labels(label), **kwargs)
        out = unet(
            x=x,
            timesteps=t,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            **unet_kwargs,
        )
        loss = (out - target).abs().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    first_loss = step()  # warm-up (allocations, oneDNN primitives); its loss is compared across sides
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = (time.perf_counter() - start) / args.steps
    return {"side": args.side, "seconds_per_step": seconds, "first_loss": first_loss, "rss_peak": rss_peak()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="demo", help="network architecture and training policy")
    p.add_argument("--latent", type=int, default=32, help="cubic latent size (the label map is 4x per axis)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", help="results file benchmarks/results/<name>.json (default train_step_<preset>)")
    p.add_argument("--_side", dest="side", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.side:
        print(json.dumps(child(args)))
        return
    common_args = ["--preset", args.preset, "--latent", str(args.latent), "--batch", str(args.batch),
                   "--steps", str(args.steps), "--threads", str(args.threads), "--seed", str(args.seed)]  # fmt: skip
    report = {"machine": machine(), "args": {k: v for k, v in vars(args).items() if k != "side"}, "runs": {}}
    print(
        f"machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, torch {report['machine']['torch']}"
    )
    for side in ("reference", "maisi"):
        r = run_child(__file__, [*common_args, "--_side", side], prompt_release=False)
        report["runs"][side] = r
        print(
            f"  {side}: "
            + (r.get("error") or f"{r['seconds_per_step']:.3f} s/step, first loss {r['first_loss']:.6f}")
        )
    ref, ours = report["runs"]["reference"], report["runs"]["maisi"]
    if "error" not in ref and "error" not in ours:
        report["ratio"] = ours["seconds_per_step"] / ref["seconds_per_step"]
        report["first_loss_abs_diff"] = abs(ours["first_loss"] - ref["first_loss"])
        print(
            f"  ratio maisi / reference: {report['ratio']:.2f}; first-step loss differs by {report['first_loss_abs_diff']:.2e}"
        )
    path = write_results(args.name or f"train_step_{args.preset}", report)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
