"""GPU generation with the memory plan, beside the official way of running MAISI (``bench_pipeline.py``'s sides).

``reference``: MONAI's MAISI classes run the official way (fp16 autocast, flash attention, fp16 group norm, 48^3
windows overlapping by 0.6666); ``maisi``: ``maisi.generation.generate`` with the memory plan for ``--max-memory``
applied (:func:`maisi.memory.plan_memory`: decode window and slabs, idle networks on the host when needed), the
plan recorded in the results. A request the plan refuses is recorded with the refusal. Official architecture,
seeded random weights (time and memory do not depend on them), the same label map and noise on both sides.

    python benchmarks/bench_gpu_generate.py --sizes 256 512 --max-memory 16GB --name gpu_generate
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_pipeline as bp  # noqa: E402
from common import machine, run_child, write_results  # noqa: E402


def child(args) -> dict:
    from maisi.errors import MaisiError
    from maisi.memory import parse_memory, plan_memory

    original = bp.run_maisi
    plans = {}

    def planned(a, cfg, model_set, noise, rec, out_dir, plain):
        # generate plans (and applies) its memory itself; the same plan is recorded here
        cfg.generate = dataclasses.replace(cfg.generate, max_memory=args.max_memory or None)
        budget = parse_memory(args.max_memory) if args.max_memory else None
        plan = plan_memory(
            cfg.model, cfg.generate, budget_bytes=budget, device=args.device, mask_source="file"
        )
        plans["plan"] = plan.describe()
        return original(a, cfg, model_set, noise, rec, out_dir, plain)

    bp.run_maisi = planned
    try:
        out = bp.child(args)
    except MaisiError as e:
        return {"side": args.side, "size": args.size, "refused": str(e)}
    out["memory_plan"] = plans.get("plan")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--spacing", type=float, nargs=3, default=[1.5, 1.5, 2.0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--loop-steps", type=int, help="steps run (default --steps; fewer = extrapolated)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="float16", help="maisi's compute dtype")
    p.add_argument("--max-memory", default="", help="maisi's budget (default: the free device memory)")
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sides", nargs="+", default=["reference", "maisi"])
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--name", default="gpu_generate")
    p.add_argument("--_side", dest="side", help=argparse.SUPPRESS)
    p.add_argument("--_size", dest="size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--_dump", dest="dump", help=argparse.SUPPRESS)
    p.add_argument("--preset", default="rflow-ct", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.loop_steps = args.loop_steps or args.steps
    if args.side:
        print(json.dumps(child(args)))
        return
    scale = args.steps / args.loop_steps
    report = {"machine": machine(), "args": {k: v for k, v in vars(args).items() if k not in ("side", "size", "dump")},
              "extrapolated": scale != 1, "results": []}  # fmt: skip
    common = ["--spacing", *map(str, args.spacing), "--steps", str(args.steps), "--loop-steps", str(args.loop_steps),
              "--device", args.device, "--dtype", args.dtype, "--threads", str(args.threads), "--seed", str(args.seed),
              "--max-memory", args.max_memory]  # fmt: skip
    for size in args.sizes:
        runs = {}
        with tempfile.TemporaryDirectory() as tmp:
            for side in args.sides:
                dump = str(Path(tmp) / f"{side}.npy")
                t0 = time.time()
                r = run_child(__file__, [*common, "--_side", side, "--_size", str(size), "--_dump", dump],
                              timeout=args.timeout, prompt_release=False)  # fmt: skip
                r["wall_s"] = time.time() - t0
                if "stages" in r:
                    st = r["stages"]
                    st["loop"]["seconds"] *= scale
                    st["end_to_end"]["seconds"] += st["loop"]["seconds"] * (1 - 1 / scale)
                    r["unit"] = dump
                runs[side] = r
                print(f"{size}^3 {side}: " + (r.get("error") or r.get("refused") or f"{r['wall_s']:.0f} s"))
            bp._agreement(runs)
        ok = {s: r for s, r in runs.items() if "stages" in r}
        ratios = bp._print_table(size, ok) if ok else {}
        report["results"].append({"size": size, "runs": runs, "ratios": ratios})
        write_results(args.name, report)
    print(f"wrote {write_results(args.name, report)}")


if __name__ == "__main__":
    main()
