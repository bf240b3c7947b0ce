"""Peak memory of ``maisi generate`` with few and with many samples: streamed results keep it flat.

Each sample is written (and its arrays dropped) as soon as it is made, so a run's peak RSS should not depend on the
number of samples: ``--counts 2 20`` runs the same request for 2 and for 20 samples, each in a fresh process, and
reports each process's own peak RSS (``os.wait4``'s ``ru_maxrss``) and the ratio of the last to the first (the
goal: within 5%).

    python benchmarks/bench_stream_memory.py                      # demo weights, 128^3 at 3 mm, 2 steps
    python benchmarks/bench_stream_memory.py --counts 2 20 --steps 2 --name stream_memory
    python benchmarks/bench_stream_memory.py --env MALLOC_MMAP_THRESHOLD_=1048576 --name stream_memory_mmap_1m

``--env`` sets variables of the measured processes, e.g. glibc's fixed mmap threshold: by default glibc raises its
threshold each time a large block is freed, so later large blocks come from the heap and the heap fragments.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import fmt_bytes, machine, write_results  # noqa: E402


def measure(count: int, args: argparse.Namespace, folder: Path) -> dict:
    """One ``maisi generate`` of ``count`` samples in a fresh process: its peak RSS, wall time and samples."""
    out = folder / f"samples_{count}"
    argv = [
        sys.executable,
        "-m",
        "maisi",
        "generate",
        "--weights",
        args.weights,
        "--output-size",
        *map(str, args.size),
    ]
    argv += ["--spacing", *map(str, args.spacing), "--steps", str(args.steps), "--num-samples", str(count)]
    argv += ["--output-dir", str(out)]
    start = time.perf_counter()
    env = {**os.environ, **dict(item.split("=", 1) for item in args.env)}
    with open(folder / f"samples_{count}.log", "w") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        raise SystemExit(
            f"maisi generate ({count} samples) exited {rc}:\n{(folder / f'samples_{count}.log').read_text()}"
        )
    written = sorted(p.name for p in out.glob("sample_?????.json"))
    peak = usage.ru_maxrss * 1024  # kilobytes on Linux
    print(
        f"{count:>3} samples: peak RSS {fmt_bytes(peak)}, {seconds:.1f} s ({len(written)} written)",
        flush=True,
    )
    return {"samples": count, "written": len(written), "peak_rss": peak, "seconds": round(seconds, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", type=int, nargs="+", default=[2, 20], help="numbers of samples, one run each")
    p.add_argument("--weights", default="demo")
    p.add_argument("--size", type=int, nargs=3, default=[128, 128, 128])
    p.add_argument("--spacing", type=float, nargs=3, default=[3.0, 3.0, 3.0])
    p.add_argument("--steps", type=int, default=2)
    p.add_argument(
        "--env", nargs="+", default=[], metavar="NAME=VALUE", help="environment of the measured runs"
    )
    p.add_argument("--name", default="stream_memory", help="results file name (benchmarks/results/NAME.json)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="maisi-stream-") as tmp:
        runs = [measure(n, args, Path(tmp)) for n in args.counts]
    ratio = runs[-1]["peak_rss"] / runs[0]["peak_rss"]
    print(f"peak RSS {runs[-1]['samples']} / {runs[0]['samples']} samples: {ratio:.3f} (goal <= 1.05)")
    result = {
        "benchmark": "stream_memory",
        "command": "maisi generate --weights {weights} --output-size {size} --spacing {spacing} --steps {steps} "
        "--num-samples N".format(**vars(args)),
        "env": args.env,
        "machine": machine(),
        "runs": runs,
        "peak_ratio": round(ratio, 4),
        "goal": "the peak RSS of the most samples within 5% of the fewest",
        "within_goal": ratio <= 1.05,
    }
    print(write_results(args.name, result))


if __name__ == "__main__":
    main()
