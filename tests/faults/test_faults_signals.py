"""Real processes stopped from outside: SIGTERM and SIGINT during generation, two identical generations into one
folder at once, and ``kill -9`` during training and inside a checkpoint write; then the same command, run again,
completes the work.

Each case is a process of its own running ``maisi.cli.main`` exactly as ``python -m maisi`` does (``sys.exit`` of
its code, the interpreter's own shutdown). Importing torch and MONAI costs several CPU-seconds per process, more
than the cases themselves, so one interpreter imports them once and forks a process per case (before any torch
thread exists); all cases run at once, and a watcher thread per process signals it when it is where its case needs
it. The tests then check what each left on disk and run the same command again in this process.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from faults_common import GENERATE, PHANTOM, complete_samples, run_cli, wait_for

TIMEOUT = 300  # seconds any case may take on a loaded 2-core machine (each takes a few)
SAMPLES = 4
TRAIN_OPTIONS = [
    "train.patch_size=[16,16,16]",
    "train.adv_warmup_steps=1",
    "train.val_every=0",
    "train.log_every=1",
    "train.ckpt_every=1",
]

#: The fork server: imports what every case needs, reads one JSON list of cases from stdin, forks one process per
#: case (stdout and stderr to its files, then ``sys.exit(maisi.cli.main(argv))``, as ``python -m maisi``), prints
#: ``{"name", "pid"}`` per case, then ``{"name", "rc"}`` as each ends (rc < 0: killed by that signal).
FORK_SERVER = r"""
import json, os, signal, sys
import monai.apps.generation.maisi.networks.autoencoderkl_maisi, monai.apps.generation.maisi.networks.controlnet_maisi
import monai.losses, monai.metrics, monai.networks.nets, torch.utils.tensorboard
import maisi.cli, maisi.networks.adagn, maisi.networks.builders, maisi.generation.output_dir
import maisi.generation.outputs, maisi.generation.preview, maisi.generation.qc, maisi.training.checkpointing
maisi.cli.build_parser()  # imports every command

def die_in_checkpoint_write(step):
    # SIGKILL inside the write of checkpoint `step`: after its first component went into the hidden temporary
    # folder, before the training state and the rename
    module = maisi.training.checkpointing
    save = module.save_component
    def save_then_die(path, *args, **kwargs):
        save(path, *args, **kwargs)
        if kwargs.get("extra", {}).get("step") == step:
            os.kill(os.getpid(), signal.SIGKILL)
    module.save_component = save_then_die

print("ready", flush=True)
names = {}
for case in json.loads(sys.stdin.readline()):
    pid = os.fork()
    if pid == 0:
        sys.stdin.close()
        for fd, path in ((1, case["stdout"]), (2, case["stderr"])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        if case.get("die_in_checkpoint_write"):
            die_in_checkpoint_write(case["die_in_checkpoint_write"])
        sys.exit(maisi.cli.main(case["argv"]))
    names[pid] = case["name"]
    print(json.dumps({"name": case["name"], "pid": pid}), flush=True)
while names:
    pid, status = os.wait()
    print(json.dumps({"name": names.pop(pid), "rc": os.waitstatus_to_exitcode(status)}), flush=True)
"""


@dataclass
class Case:
    """One forked process: its command, its output files, its exit code once known, what its watcher saw."""

    name: str
    argv: list[str]
    folder: Path
    pid: int | None = None
    rc: int | None = None
    seen: dict = field(default_factory=dict)
    ended: threading.Event = field(default_factory=threading.Event)

    @property
    def out(self) -> list[str]:
        path = self.folder / f"{self.name}.stdout"
        return path.read_text().splitlines() if path.exists() else []

    @property
    def err(self) -> str:
        path = self.folder / f"{self.name}.stderr"
        return path.read_text() if path.exists() else ""

    def finish(self) -> int:
        assert self.ended.wait(TIMEOUT), f"{self.name}: still running after {TIMEOUT} s"
        assert "watcher_error" not in self.seen, self.seen["watcher_error"]
        return self.rc


def _sample_lines(lines: list[str]) -> list[int]:
    return [int(line.split(":")[0].split()[1]) for line in lines if line.startswith("sample ")]


def _signal_after_first_sample(case: Case, signum: int) -> None:
    out = Path(case.argv[case.argv.index("--output-dir") + 1])
    wait_for(lambda: 0 in _sample_lines(case.out) or case.ended.is_set(), timeout=TIMEOUT, what="sample 0")
    case.seen["running"] = not case.ended.is_set()  # streamed: said while the run goes on
    case.seen["sample_0_complete"] = (out / "sample_00000.json").is_file()
    os.kill(case.pid, signum)


def _kill_during_training(case: Case, delay: float) -> None:
    first = Path(case.argv[case.argv.index("--run-dir") + 1]) / "checkpoints" / "step_000001"
    wait_for(lambda: first.is_dir() or case.ended.is_set(), timeout=TIMEOUT, what="checkpoint 1")
    time.sleep(delay)  # somewhere in step 2, its checkpoint write or step 3
    os.kill(case.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def cases(weights, tmp_path_factory):
    """Every case of the module, started at once."""
    from maisi.data.phantom import write_phantoms

    root = tmp_path_factory.mktemp("signals")
    phantoms = root / "phantoms"
    write_phantoms(num=3, output_dir=phantoms, size=(32, 32, 32), spacing=(4, 4, 4), seed=0)
    generate = [*GENERATE, "--weights", weights, *PHANTOM, "--steps", "3"]
    train = ["train", "vae", "--preset", "tiny", "--data", phantoms]
    argvs = {
        "term": [*generate, "--num-samples", SAMPLES, "--output-dir", root / "term"],
        "int": [*generate, "--num-samples", SAMPLES, "--output-dir", root / "int"],
        "shared_a": [*generate, "--num-samples", 2 * SAMPLES, "--output-dir", root / "shared"],
        "shared_b": [*generate, "--num-samples", 2 * SAMPLES, "--output-dir", root / "shared"],
        "killed": [*train, "--run-dir", root / "killed", "--max-steps", 20, *TRAIN_OPTIONS],
        "in_write": [*train, "--run-dir", root / "in_write", "--max-steps", 4, *TRAIN_OPTIONS],
    }
    by_name = {n: Case(n, [str(a) for a in argv], root) for n, argv in argvs.items()}
    server = subprocess.Popen(
        [sys.executable, "-c", FORK_SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    )
    assert server.stdout.readline().strip() == "ready"
    jobs = [
        {
            "name": c.name,
            "argv": c.argv,
            "stdout": str(root / f"{c.name}.stdout"),
            "stderr": str(root / f"{c.name}.stderr"),
        }
        for c in by_name.values()
    ]
    jobs[-1]["die_in_checkpoint_write"] = 2
    server.stdin.write(json.dumps(jobs) + "\n")
    server.stdin.close()
    for _ in jobs:
        started = json.loads(server.stdout.readline())
        by_name[started["name"]].pid = started["pid"]

    def collect() -> None:  # exit codes as the cases end
        for line in server.stdout:
            ended = json.loads(line)
            by_name[ended["name"]].rc = ended["rc"]
            by_name[ended["name"]].ended.set()

    def watch(case: Case, action, *args) -> None:
        try:
            action(case, *args)
        except BaseException as e:  # reported by the test of this case
            case.seen["watcher_error"] = repr(e)

    delay = random.Random().uniform(0.0, 0.8)
    by_name["killed"].seen["delay_s"] = round(delay, 3)
    threads = [
        threading.Thread(target=collect, daemon=True),
        threading.Thread(target=watch, args=(by_name["term"], _signal_after_first_sample, signal.SIGTERM)),
        threading.Thread(target=watch, args=(by_name["int"], _signal_after_first_sample, signal.SIGINT)),
        threading.Thread(target=watch, args=(by_name["killed"], _kill_during_training, delay)),
    ]
    for t in threads:
        t.daemon = True
        t.start()
    yield by_name
    for c in by_name.values():
        if not c.ended.is_set() and c.pid is not None:
            os.kill(c.pid, signal.SIGKILL)
    server.wait(timeout=TIMEOUT)


@pytest.mark.parametrize("name, rc", [("term", 143), ("int", 130)])
def test_a_signal_during_generation_leaves_complete_samples_only(cases, name, rc, capsys):
    case = cases[name]
    out = Path(case.argv[case.argv.index("--output-dir") + 1])
    assert case.finish() == rc, case.err
    assert case.seen == {"running": True, "sample_0_complete": True}  # sample 0 on disk and said while it ran
    assert case.err.strip().splitlines()[-1] == "maisi generate: interrupted" and "Traceback" not in case.err
    done = complete_samples(out)  # no temporary, no sample without its sidecar
    assert 0 in done and len(done) < SAMPLES
    again = run_cli(case.argv, capsys)
    assert again.rc == 0, again.err
    assert (
        set(_sample_lines(again.out.splitlines())) == set(range(SAMPLES)) - done
    )  # exactly what was missing
    assert complete_samples(out) == set(range(SAMPLES))
    assert not list(out.glob(".sample_*")), sorted(p.name for p in out.iterdir())


def test_two_identical_runs_share_one_folder(cases):
    """Both exit 0 and together write every sample exactly once (was: both exited 2)."""
    made = []
    for name in ("shared_a", "shared_b"):
        case = cases[name]
        assert case.finish() == 0, case.err
        assert "Traceback" not in case.err
        made += _sample_lines(case.out)
    assert sorted(made) == list(range(2 * SAMPLES))  # each sample once, by one of the two
    out = Path(cases["shared_a"].argv[cases["shared_a"].argv.index("--output-dir") + 1])
    assert complete_samples(out) == set(range(2 * SAMPLES))
    assert not list(out.glob(".sample_*"))


def _complete_checkpoints(run_dir: Path) -> list[int]:
    """The steps of the ``step_*`` folders, each checked to hold the whole checkpoint."""
    from maisi.training.checkpointing import list_checkpoints, load_checkpoint

    folders = sorted(p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert [p for _, p in list_checkpoints(run_dir)] == folders  # none without its training state
    for folder in folders:
        assert load_checkpoint(folder).weights.keys() == {"vae", "discriminator"}
    return [int(p.name[5:]) for p in folders]


def _resume(case: Case, steps: int, capsys, monkeypatch) -> int:
    """The same command for ``steps`` steps in all; returns the step it resumed from."""
    import maisi.training.loop as loop

    loaded = []
    real = loop.load_checkpoint
    monkeypatch.setattr(loop, "load_checkpoint", lambda path: loaded.append(Path(path)) or real(path))
    argv = list(case.argv)
    argv[argv.index("--max-steps") + 1] = str(steps)
    result = run_cli(argv, capsys)
    assert result.rc == 0, result.err
    assert result.out.strip().splitlines()[-1].startswith(f"final: step={steps} ")
    run_dir = Path(argv[argv.index("--run-dir") + 1])
    assert [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")] == []
    assert len(loaded) == 1
    return int(loaded[0].name[5:])


def test_kill_9_during_training_leaves_complete_checkpoints_and_resumes(cases, capsys, monkeypatch):
    case = cases["killed"]
    run_dir = Path(case.argv[case.argv.index("--run-dir") + 1])
    assert case.finish() == -signal.SIGKILL, (case.seen, case.err)
    steps = _complete_checkpoints(run_dir)  # hidden temporaries of a write the kill cut are ignored
    assert steps and steps[-1] >= 1, (steps, case.seen)
    assert _resume(case, steps[-1] + 1, capsys, monkeypatch) == steps[-1]
    assert _complete_checkpoints(run_dir)[-1] == steps[-1] + 1


def test_kill_9_inside_a_checkpoint_write_leaves_the_previous_one(cases, capsys, monkeypatch):
    case = cases["in_write"]
    run_dir = Path(case.argv[case.argv.index("--run-dir") + 1])
    assert case.finish() == -signal.SIGKILL, case.err
    partial = [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".step_000002")]
    assert len(partial) == 1 and len(list(partial[0].iterdir())) == 1  # one component, no training state
    assert _complete_checkpoints(run_dir) == [1]  # the hidden, partial step 2 is not a checkpoint
    assert _resume(case, 2, capsys, monkeypatch) == 1
    assert _complete_checkpoints(run_dir) == [1, 2]
