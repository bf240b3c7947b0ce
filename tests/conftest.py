"""Shared fixtures: seeded generators, tiny configs, the real test volumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

DATA = Path(__file__).parent / "data"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def torch_gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def tiny_config():
    from maisi.config import preset

    return preset("tiny")


@pytest.fixture
def data_dir() -> Path:
    return DATA
