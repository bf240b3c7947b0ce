"""--max-memory sizes, the default budget, and the default device and dtype."""

from __future__ import annotations

import pytest
import torch

from maisi.errors import RequestError
from maisi.memory import available_memory, cuda_bf16_fast, default_device, default_dtype, parse_memory
from maisi.memory.budget import format_bytes


@pytest.mark.parametrize(
    "text, expected",
    [("16GB", 16 * 2**30), ("16G", 16 * 2**30), ("16GiB", 16 * 2**30), ("16 gb", 16 * 2**30),
     ("512MB", 512 * 2**20), ("1.5TB", int(1.5 * 2**40)), ("2048", 2048), ("64k", 64 * 2**10), (4096, 4096)],
)  # fmt: skip
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["", "GB", "16XB", "-1GB", "0", "sixteen", "16 G B"])
def test_parse_memory_refuses_in_one_line(text):
    with pytest.raises(RequestError, match="max-memory") as err:
        parse_memory(text)
    assert "\n" not in str(err.value)


def test_format_bytes():
    assert format_bytes(16 * 2**30) == "16.0 GiB"
    assert format_bytes(300 * 2**20) == "300 MiB"


def test_cpu_budget_is_available_ram_plus_own():
    budget = available_memory("cpu")
    physical = torch.tensor(0)  # keep torch imported for the RSS below
    import os

    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 2**28 < budget <= total + 2**30, (budget, total, physical)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only expectations")
def test_defaults_without_a_gpu():
    assert default_device() == "cpu"
    assert default_dtype("cpu") == "float32"
    assert cuda_bf16_fast("cuda") is False and cuda_bf16_fast("cpu") is False


def test_defaults_on_this_machine_are_consistent():
    device = default_device()
    dtype = default_dtype(device)
    assert dtype in ("float32", "float16")
    if device == "cuda":
        major, _ = torch.cuda.get_device_capability()
        assert dtype == ("float16" if major >= 7 else "float32")
        assert cuda_bf16_fast(0) == (major >= 8)
