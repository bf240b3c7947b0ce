"""The ``maisi`` command line: thin sub-commands, each parsing arguments and calling one library function.

Each command lives in its own module exposing ``register(subparsers)`` which adds a parser whose ``func`` default
is ``run(args) -> int``. Errors derived from :class:`maisi.errors.MaisiError` print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Sequence

from maisi import __version__
from maisi.errors import MaisiError, NotImplementedYet

#: command name -> module (under maisi.cli) that registers it
COMMANDS: dict[str, str] = {
    "generate": "generate",
    "phantom": "phantom",
    "prepare": "prepare",
    "encode": "encode",
    "train": "train",
    "evaluate": "evaluate",
    "masks": "masks",
    "download": "download",
    "info": "info",
    "export": "export",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maisi",
        description="MAISI: synthetic CT images with paired segmentation masks by 3D latent diffusion.",
    )
    parser.add_argument("--version", action="version", version=f"maisi {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        try:
            mod = importlib.import_module(f"maisi.cli.{module}")
        except ModuleNotFoundError as e:
            if e.name != f"maisi.cli.{module}":
                raise
            p = sub.add_parser(name, help="(not implemented yet)")
            p.set_defaults(func=_not_implemented(name))
            continue
        mod.register(sub)
    return parser


def _not_implemented(name: str):
    def run(args: argparse.Namespace) -> int:
        raise NotImplementedYet(f"'maisi {name}' is not implemented yet")

    return run


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``maisi`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0 if args.command is None else 2
    previous = _terminate_like_interrupt()
    try:
        return int(args.func(args) or 0)
    except MaisiError as e:
        print(f"maisi {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"maisi {args.command}: interrupted", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


#: commands whose process fixes glibc's mmap threshold (:mod:`maisi.memory.allocator`): a long run of samples
COMMANDS_FIXING_MALLOC = frozenset({"generate"})


def console_main() -> int:
    """The ``maisi`` program (console script, ``python -m maisi``): :func:`main` with the process-wide settings a
    program, not a library call, decides: for ``generate``, glibc's mmap threshold fixed at 1 MiB, so the memory of
    an N-sample run does not grow with N (``MAISI_MALLOC=default`` keeps glibc's defaults)."""
    argv = sys.argv[1:]
    if argv and argv[0] in COMMANDS_FIXING_MALLOC:
        from maisi.memory.allocator import fix_mmap_threshold

        fix_mmap_threshold()
    return main(argv)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` runs: temporary files are removed, sample claims
    released, nothing half-written is left."""


def _terminate_like_interrupt():
    """Route SIGTERM through :class:`Terminated` (main thread only); returns the previous handler."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise Terminated()

    return signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":  # python -m maisi.cli
    sys.exit(main())
