"""The benchmark's reference side is the official pipeline: its loop and decode equal the equivalence tests' oracle
(``tests/reference_pipeline.reference_image``) bit for bit, and its maisi side holds the same weights."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from maisi.config import preset

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _bench():
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    import bench_pipeline
    import common

    return bench_pipeline, common


@pytest.fixture(scope="module")
def nets():
    _, common = _bench()
    return common.reference_networks(preset("tiny").model, seed=1)


def test_reference_side_equals_the_oracle(nets):
    from reference_pipeline import official_scheduler, reference_image

    bench, _ = _bench()
    label = np.zeros((32, 32, 32), np.uint8)
    label[4:28, 4:28, 2:30] = 200
    label[8:20, 8:24, 5:25] = 1
    noise = torch.randn(1, 4, 8, 8, 8, generator=torch.Generator().manual_seed(2))
    spacing = (3.0, 3.0, 3.0)
    with torch.no_grad():
        expect = reference_image(
            nets,
            official_scheduler("config_network_rflow.json"),
            label,
            spacing,
            noise,
            num_inference_steps=2,
        )
        control, spacing_tensor, modality = bench.reference_step_inputs(
            nets, label, spacing, "cpu", half=False
        )
        latents = bench.reference_loop(
            nets, official_scheduler("config_network_rflow.json"), noise, 2, control, spacing_tensor, modality
        )
        decoded = bench.reference_decode(nets, latents, (48, 48, 48), 0.6666, torch.device("cpu"))
    assert torch.equal(latents, expect.latent)
    assert torch.equal(decoded[0, 0], expect.decoded)


def test_maisi_side_holds_the_reference_weights(nets):
    _, common = _bench()
    cfg = preset("tiny")
    ms = common.maisi_model_set(cfg.model, nets)
    assert ms.config.vae.scale_factor == nets.scale_factor
    for name, ref in (
        ("unet", nets.diffusion_unet),
        ("controlnet", nets.controlnet),
        ("vae", nets.autoencoder),
    ):
        ours = ms[name].state_dict()
        assert all(torch.equal(ours[k], v) for k, v in ref.state_dict().items())


def test_encode_memory_benchmark_stops_after_the_requested_windows(tmp_path, monkeypatch):
    """``bench_encode_memory`` runs ``encode_dataset`` in a child and cuts it after ``--windows`` windows."""
    import json

    _, common = _bench()
    import bench_encode_memory

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    bench_encode_memory.main(
        ["--preset", "tiny", "--size", "64", "64", "64", "--windows", "1", "--threads", "1", "--name", "enc"]
    )
    (result,) = json.loads((tmp_path / "enc.json").read_text())["results"]
    assert "error" not in result, result
    # tiny: 32^3 image windows = 8^3 latent windows, step 6 over a 16^3 latent -> 3 per axis
    assert (result["windows_run"], result["windows_in_plan"], result["completed"]) == (1, 27, False)
    assert result["latent"] == [16, 16, 16]
    assert result["peak_rss"] > 0 and result["baseline_rss"] > 0
    assert result["peak_rss"] >= result["baseline_rss"]
