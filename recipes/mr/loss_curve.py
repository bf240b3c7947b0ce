"""Print a training run's loss curve from its TensorBoard log: ``python recipes/mr/loss_curve.py RUN_DIR``.

One line per logged step: the mean training loss over the logging window and, where the run validated, the
validation loss.
"""

from __future__ import annotations

import sys
from pathlib import Path


def curve(run_dir: str | Path) -> list[tuple[int, float | None, float | None]]:
    """``(step, train/loss, val/val_loss)`` for every step either was logged at."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(run_dir) / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    tags = set(events.Tags()["scalars"])
    series = {
        tag: {e.step: e.value for e in events.Scalars(tag)}
        for tag in ("train/loss", "val/val_loss")
        if tag in tags
    }
    steps = sorted(set().union(*(s.keys() for s in series.values()))) if series else []
    return [(s, series.get("train/loss", {}).get(s), series.get("val/val_loss", {}).get(s)) for s in steps]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python recipes/mr/loss_curve.py RUN_DIR", file=sys.stderr)
        return 2
    print(f"{'step':>6} {'train loss':>11} {'val loss':>10}")
    for step, *losses in curve(argv[0]):
        train, val = (f"{v:.4f}" if v is not None else "-" for v in losses)
        print(f"{step:>6} {train:>11} {val:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
