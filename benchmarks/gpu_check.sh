#!/usr/bin/env bash
# Every CUDA path of maisi on one GPU, in under 8 minutes (the parts' limits add up to 7.4): the gpu-marked tests, the memory model against the
# allocator, the decode plan against the official window setting, and 256^3 / 512^3 generation (official
# architecture, random weights) beside the official way of running MAISI. Results: benchmarks/results/gpu_*.json
# (and $OUT/ when set, for machines that hand files back). Each part has its own time limit; a part that fails
# or runs out of time is recorded and the next one runs.
#
#     bash benchmarks/gpu_check.sh            # from the repository root, on a machine with a CUDA GPU
set -u
cd "$(dirname "$0")/.."
RESULTS=benchmarks/results
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu_check.log"
: > "$LOG"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)

part() {  # part NAME SECONDS COMMAND...: run one part under a time limit, log its outcome
    local name=$1 limit=$2
    shift 2
    local t0=$(date +%s)
    echo "=== $name (limit ${limit}s)" | tee -a "$LOG"
    timeout --kill-after=10 "$limit" "$@" >> "$LOG" 2>&1
    local rc=$?
    echo "=== $name: exit $rc after $(( $(date +%s) - t0 ))s" | tee -a "$LOG"
}

python - <<'PY' > "$RESULTS/gpu_machine.json" 2>> "$LOG"
import json, torch
from maisi.memory import available_memory, default_device, default_dtype
from maisi.performance import cuda_bf16_fast
assert torch.cuda.is_available(), "no CUDA device: nothing to check"
p = torch.cuda.get_device_properties(0)
print(json.dumps({"gpu": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2**30, 1),
                  "free_gib": round(available_memory("cuda") / 2**30, 1), "bf16_native": cuda_bf16_fast(0),
                  "default_device": default_device(), "default_dtype": default_dtype("cuda"),
                  "torch": torch.__version__, "cuda": torch.version.cuda}, indent=1))
PY
[ $? -eq 0 ] || { echo "no CUDA device: gpu_check.sh has nothing to check" | tee -a "$LOG"; exit 1; }

part tests 140 python -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu_paths.py \
    --junitxml="$RESULTS/gpu_tests.xml" -rs
part memory-model 70 python benchmarks/bench_memory_model.py --suite gpu --device cuda --name gpu_memory_model
part plans 20 python - <<'PY'
import dataclasses, json
from maisi.config import preset
from maisi.errors import RequestError
from maisi.memory import parse_memory, plan_memory
cfg = preset("rflow-ct")
out = {}
for size, budget in (((256, 256, 256), "16GB"), ((512, 512, 512), "16GB"), ((512, 512, 768), "24GB")):
    gen = dataclasses.replace(cfg.generate, output_size=size, dtype="float16", device="cuda")
    key = "x".join(map(str, size)) + "@" + budget
    try:
        out[key] = plan_memory(cfg.model, gen, budget_bytes=parse_memory(budget), device="cuda").describe()
    except RequestError as e:
        out[key] = {"refused": str(e)}
    print(key, out[key].get("refused") or f"peak {out[key]['peak_gib']} GiB, decode {out[key]['decode']}")
json.dump(out, open("benchmarks/results/gpu_plans.json", "w"), indent=1)
PY
part decode-plan 45 python benchmarks/bench_decode_plan.py --device cuda --dtype float16 --size 256 \
    --sides plan official whole whole-small slabs-small --name gpu_decode_plan_256
part generate-256 60 python benchmarks/bench_gpu_generate.py --sizes 256 --max-memory 16GB --name gpu_generate_256
part generate-512 110 python benchmarks/bench_gpu_generate.py --sizes 512 --loop-steps 10 --max-memory 16GB \
    --name gpu_generate_512

echo "gpu_check.sh done in $(( $(date +%s) - START ))s" | tee -a "$LOG"
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT" && cp "$RESULTS"/gpu_* "$OUT"/ 2>/dev/null
fi
