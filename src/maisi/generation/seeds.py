"""Per-sample seeds and sharding over processes.

Every random draw of sample ``index`` comes from a generator seeded by ``(seed, index, attempt, stream)`` through
NumPy's ``SeedSequence``, so a sample does not depend on which process made it, on the batch it was in, or on the
other samples; quality-check retries (``attempt`` > 0) get fresh, equally reproducible seeds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

#: independent random streams of one sample attempt
STREAMS = {"noise": 0, "mask": 1, "sampler": 2, "mask_sampler": 3}


def derive_seed(seed: int, index: int, attempt: int = 0, *, stream: str = "noise") -> int:
    """A 63-bit seed for one stream of one attempt of one sample (non-negative, fits ``torch.manual_seed``)."""
    if seed < 0 or index < 0 or attempt < 0:
        raise ValueError(f"seed, index and attempt must be >= 0, got {seed}, {index}, {attempt}")
    state = np.random.SeedSequence([int(seed), int(index), int(attempt), STREAMS[stream]]).generate_state(
        1, np.uint64
    )
    return int(state[0] >> np.uint64(1))


def torch_generator(seed: int) -> torch.Generator:
    """A CPU generator: noise is drawn on the CPU so a seed gives the same sample on every device."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


def shard(indices: Sequence[int], rank: int, world_size: int) -> list[int]:
    """The sample indices one process makes: every ``world_size``-th, starting at ``rank`` (disjoint, complete)."""
    return [int(i) for k, i in enumerate(indices) if k % world_size == rank]
