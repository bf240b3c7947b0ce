"""Shared pieces of the benchmarks: memory probes, machine facts, child processes, same-weights networks.

Every measured side runs in a fresh child process so that its peak memory is its own: CPU peak = ``VmHWM`` of
``/proc/self/status`` (reset per stage through ``/proc/self/clear_refs``), CUDA peak =
``torch.cuda.max_memory_allocated``. Memory benchmarks run their children with ``MALLOC_MMAP_THRESHOLD_=65536`` so
freed tensors leave the resident set at once; timing benchmarks keep the default allocator (see :func:`run_child`).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
TESTS = ROOT / "tests"


# ------------------------------------------------------------------------------------------------ memory


def _status(key: str) -> int:
    """A ``/proc/self/status`` entry in bytes (0 where there is no procfs)."""
    try:
        with open("/proc/self/status") as f:
            match = re.search(key + r":\s+(\d+) kB", f.read())
    except OSError:
        return 0
    return 1024 * int(match.group(1)) if match else 0


def rss() -> int:
    return _status("VmRSS")


def rss_peak() -> int:
    return _status("VmHWM")


def reset_rss_peak() -> None:
    """Make ``VmHWM`` restart from the current RSS (Linux >= 4.0)."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class Stage:
    """Times one stage and records its peak CPU RSS (and CUDA peak) into ``record[name]``: ``seconds``,
    ``rss_baseline`` (RSS when the stage began), ``rss_peak`` (the highest RSS during it) and, on CUDA,
    ``cuda_peak``. The entry is recorded even when the stage raises."""

    def __init__(self, record: dict[str, Any], name: str, device: Any = None) -> None:
        self.record, self.name, self.device = record, name, device

    def __enter__(self) -> Stage:
        self._sync()
        if self._cuda():
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        self.baseline = rss()
        reset_rss_peak()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self._sync()
        entry = {
            "seconds": time.perf_counter() - self.start,
            "rss_baseline": self.baseline,
            "rss_peak": rss_peak(),
        }
        if self._cuda():
            import torch

            entry["cuda_peak"] = torch.cuda.max_memory_allocated(self.device)
        self.record[self.name] = entry

    def _cuda(self) -> bool:
        return self.device is not None and str(self.device).startswith("cuda")

    def _sync(self) -> None:
        if self._cuda():
            import torch

            torch.cuda.synchronize(self.device)


# ------------------------------------------------------------------------------------------------ machine


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    model = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    from maisi.performance import cpu_flags

    info: dict[str, Any] = {
        "cpu": model,
        "cores": os.cpu_count(),
        "simd": sorted(f for f in cpu_flags() if f in {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "fma"}),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "loadavg": os.getloadavg(),
    }
    with contextlib.suppress(Exception):
        import monai

        info["monai"] = monai.__version__
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# ------------------------------------------------------------------------------------------------ processes


def run_child(
    script: str | Path, args: list[str], *, timeout: float | None = None, prompt_release: bool = True
) -> dict[str, Any]:
    """Run ``python script args`` in a fresh process; its last stdout line is a JSON object, returned with the
    load averages before and after. A failure returns ``{"error": last stderr line}``.

    ``prompt_release`` (memory benchmarks) makes glibc map every allocation over 64 KB on its own, so freed memory
    leaves the process at once and each stage's peak is its own; it also makes every large allocation fault its
    pages in again, which slows allocation-heavy code, so timing benchmarks run with the default allocator (as
    users do)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src")]))
    if prompt_release:
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    before = os.getloadavg()
    proc = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    after = os.getloadavg()
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": tail, "loadavg_before": before, "loadavg_after": after}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(loadavg_before=before, loadavg_after=after)
    return result


def write_results(name: str, data: dict[str, Any]) -> Path:
    """``benchmarks/results/<name>.json`` (overwritten: a benchmark result is a snapshot, not an output)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    return path


# ------------------------------------------------------------------------------------------------ networks


def reference_networks(model_cfg: Any, *, seed: int = 0, scale_factor: float = 0.8):
    """MONAI's MAISI classes as the official scripts build them, seeded random weights (see
    ``tests/reference_pipeline.build_reference_networks``): CPU switches (no flash attention, fp32 group norm)."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    from reference_pipeline import build_reference_networks

    return build_reference_networks(model_cfg, seed=seed, scale_factor=scale_factor, mask=False)


def gpu_reference_networks(nets: Any, model_cfg: Any) -> Any:
    """The official GPU build of the same weights: flash attention on, the VAE's group norm output in fp16."""
    from reference_pipeline import _monai_class, monai_kwargs

    def rebuild(component: str, module: Any, **overrides: Any) -> Any:
        kwargs = monai_kwargs(component, getattr(model_cfg, component))
        kwargs.update(overrides)
        new = _monai_class(component)(**kwargs)
        new.load_state_dict(module.state_dict())
        return new.eval()

    nets.autoencoder = rebuild("vae", nets.autoencoder, use_flash_attention=True, norm_float16=True)
    nets.diffusion_unet = rebuild("unet", nets.diffusion_unet, use_flash_attention=True)
    nets.controlnet = rebuild("controlnet", nets.controlnet, use_flash_attention=True)
    return nets


def maisi_model_set(model_cfg: Any, nets: Any):
    """maisi's networks (fused VAE, SDPA attention) holding exactly the weights of ``nets``, as a ModelSet."""
    import dataclasses

    from maisi.networks import build
    from maisi.networks.checkpoint import Component, load_state_strict
    from maisi.networks.model_set import ModelSet

    cfg = dataclasses.replace(
        model_cfg, vae=dataclasses.replace(model_cfg.vae, scale_factor=nets.scale_factor)
    )
    source = {"vae": nets.autoencoder, "unet": nets.diffusion_unet, "controlnet": nets.controlnet}
    comps = {}
    for name, module in source.items():
        model = build(name, cfg).eval()
        load_state_strict(model, module.state_dict(), source=f"reference {name}")
        comps[name] = Component(name=name, model=model, config=getattr(cfg, name), path=Path("random") / name)
    return ModelSet(config=cfg, components=comps, layout="maisi", root=Path("random"))


def fmt_bytes(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB"
