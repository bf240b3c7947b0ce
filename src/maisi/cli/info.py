"""``maisi info``: versions, devices, CPU features and installed weights; ``--weights DIR...`` surveys each folder
(variant, components, datasets, supported flows and mask sources), then loads every component and counts."""

from __future__ import annotations

import argparse

from maisi import system_info
from maisi.config import preset
from maisi.kernels import build


def register(subparsers) -> None:
    p = subparsers.add_parser("info", help="versions, devices and installed weights")
    p.add_argument(
        "--weights",
        metavar="DIR",
        nargs="+",
        help="list what each folder holds and supports, then load every component strictly and count parameters",
    )
    p.add_argument(
        "--preset", default=None, help="network preset for official .pt files (default: their variant)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.weights:
        base = preset(args.preset).model if args.preset else None
        for directory in args.weights:
            for line in system_info.describe_folder(directory):
                print(line)
            missing_preset = None if base is not None else system_info.variant_without_preset(directory)
            if missing_preset is not None:
                print(f"  (no network preset for {missing_preset!r} yet: pass --preset to load and count)")
                continue
            for name, path, count in system_info.describe_weights(directory, base=base):
                print(f"{name:<12} {path}  {count:,} parameters ({count / 1e6:.1f} M)")
        return 0
    print("versions:")
    for k, v in system_info.versions().items():
        print(f"  {k:<16} {v}")
    print("devices:")
    for d in system_info.devices():
        print("  " + ", ".join(f"{k}={v}" for k, v in d.items()))
    print("generate defaults (--device auto, --dtype auto, --max-memory):")
    print("  " + ", ".join(f"{k}={v}" for k, v in system_info.generate_defaults().items()))
    print("cpu features:")
    print("  " + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in system_info.cpu_flags().items()))
    print(f"native kernels (built into {build.cache_dir()}):")
    for k, v in system_info.native_kernels().items():
        print(f"  {k:<16} {v}")
    print("weights:")
    for k, v in system_info.installed_weights().items():
        print(f"  {k:<16} {v}")
    return 0
