"""Data-parallel runs: two CPU processes (gloo) launched by torchrun train one experiment together."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from resnets import InputError, build, load_results, run
from resnets.checkpoint import load_checkpoint

# 21 validation images: 2 ranks x 8 do not divide them, so fastai's DistributedDL pads the last batches with repeats
SETTINGS = dict(classes=3, subset=7, size=32, presize=40, bs=8, epochs=2, seed=3)


def _torchrun_cmd(port: int, nproc: int = 2) -> list[str]:
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this Python")
    return [str(torchrun), "--nproc_per_node", str(nproc), "--master_port", str(port)]


def _torchrun(data, out: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    opts = [a for k, v in SETTINGS.items() for a in (f"--{k}", str(v))]
    cmd = [*_torchrun_cmd(29517, nproc), "-m", "resnets", "run", "cnn",
           "--data", str(data), *opts, "--num-workers", "0", "--no-progress", "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


# Each rank saves the first training batch that `build` gives it, in file order: the same images on every rank,
# so only the augmentation's random draws can tell the ranks apart.
FIRST_BATCH = """
    import sys

    import torch
    from fastai.torch_core import rank_distrib

    from resnets import build

    for fast in (False, True):  # the chapter's pipeline, then the fast path
        learn, _ = build("cnn", data=sys.argv[1], classes=2, subset=8, size=32, presize=40, bs=8, seed=3,
                         num_workers=0, verbose=False, fast_data=fast)
        xb, yb = learn.dls.train.new(shuffle=False).one_batch()
        torch.save({"x": xb.as_subclass(torch.Tensor), "y": yb.as_subclass(torch.Tensor)},
                   f"{sys.argv[2]}/rank{rank_distrib()}{'-fast' * fast}.pt")
"""


@pytest.mark.slow
def test_two_ranks_train_once_with_metrics_over_the_whole_validation_set(imagenette, tmp_path):
    out = tmp_path / "runs" / "cnn-ddp"
    p = _torchrun(imagenette, out)
    assert p.returncode == 0, p.stdout + p.stderr
    # both ranks trained, each on half of every epoch; only rank 0 printed the summary and wrote the folder
    assert "rank 1 of 2 trained" in p.stderr, p.stderr
    assert p.stdout.count("saved ") == 1 and p.stdout.count("cnn: accuracy ") == 1, p.stdout
    assert p.stdout.count("train_loss") == 1, "one header: rank 0 reports the epochs"
    assert sorted(x.name for x in (tmp_path / "runs").iterdir()) == ["cnn-ddp"]
    r = load_results(out)
    assert r.finished and len(r.history) == 2 and r.settings["world_size"] == 2 and r.settings["n_valid"] == 21
    assert all(0 <= h["accuracy"] <= 1 and h["train_loss"] > 0 for h in r.history)

    # the recorded accuracy and loss are the whole validation set's, not one rank's half, and count no padding
    # repeats: evaluate the final weights in one process on the same validation set and compare
    learn, _ = build("cnn", data=imagenette, **{k: v for k, v in SETTINGS.items() if k != "epochs"}, num_workers=0)
    learn.model.load_state_dict(load_checkpoint(out)["model"])
    valid_loss, acc = learn.validate()  # (2 classes: no top-5)
    assert acc == pytest.approx(r.history[-1]["accuracy"], abs=1e-6)
    assert valid_loss == pytest.approx(r.history[-1]["valid_loss"], rel=1e-4)


@pytest.mark.slow
def test_each_rank_draws_its_own_augmentation_reproducibly(imagenette, tmp_path):
    script = tmp_path / "first_batch.py"
    script.write_text(textwrap.dedent(FIRST_BATCH))
    batches = []
    for launch in ("a", "b"):
        (tmp_path / launch).mkdir()
        p = subprocess.run([*_torchrun_cmd(29519), str(script), str(imagenette), str(tmp_path / launch)],
                           capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stdout + p.stderr
        batches.append([torch.load(tmp_path / launch / f"rank{r}{kind}.pt") for kind in ("", "-fast") for r in (0, 1)])
    for i in (0, 2):  # the chapter's pipeline, the fast path
        (a0, a1), (b0, b1) = batches[0][i : i + 2], batches[1][i : i + 2]
        assert torch.equal(a0["y"], a1["y"]), "both ranks were meant to load the same images"
        assert not torch.equal(a0["x"], a1["x"]), "rank 1 drew rank 0's crops and flips: every rank sees one view"
        # seeded by rank: a second launch repeats each rank's draws exactly
        assert torch.equal(a0["x"], b0["x"]) and torch.equal(a1["x"], b1["x"])


# A run launched by torchrun (every rank runs this), resumable (`--out DIR --resume` from the first start, as an
# elastic launch would be given): with "kill" set, the first attempt's rank 1 SIGKILLs itself in the middle of the
# training epoch after that many epochs have ended (fine-tuning: its frozen epoch counts), for torchrun to restart.
RUN = """
    import json
    import os
    import signal
    import sys

    from fastai.callback.core import Callback
    from fastai.torch_core import rank_distrib

    from resnets import run

    opts = json.loads(sys.argv[1])
    kill = opts.pop("kill", None)
    first = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"


    class Kill(Callback):
        ended = 0

        def after_epoch(self):
            self.ended += 1

        def after_batch(self):
            if first and self.training and self.ended == kill and self.iter == 1 and rank_distrib() == 1:
                os.kill(os.getpid(), signal.SIGKILL)


    run(opts.pop("name"), resume=True, progress=False, num_workers=0, cbs=[Kill()] if kill is not None else None,
        **opts)
"""


LAUNCH_TAG = "RESNETS_TEST_LAUNCH"  # in the environment of a launch's every process, however it was started


def _launch(tmp_path, opts: dict, launcher: list[str], env=None) -> subprocess.Popen:
    """Start `launcher` on the resumable script, its output in a file (not a pipe: a worker left running would hold a
    pipe open, and reading it would hang), every process it starts tagged in its environment (`_finish` ends them)."""
    import uuid

    script = tmp_path / "run_resumable.py"
    script.write_text(textwrap.dedent(RUN))
    tag = uuid.uuid4().hex
    log = open(tmp_path / f"launch-{tag}.log", "w+")  # noqa: SIM115 (closed by _finish)
    p = subprocess.Popen([*launcher, str(script), json.dumps(opts)], stdout=log, stderr=subprocess.STDOUT,
                         env={**(env or os.environ), LAUNCH_TAG: tag}, start_new_session=True)
    p.log, p.tag = log, tag
    return p


def _kill_tagged(tag: str) -> list[int]:
    "SIGKILL every process whose environment has the launch's tag (restarted workers may be in sessions of their own)."
    killed, mark = [], f"{LAUNCH_TAG}={tag}".encode()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and mark in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), 9)
                killed.append(int(proc.name))
        except OSError:  # gone already, or not ours to read
            pass
    return killed


def _finish(p: subprocess.Popen, timeout: float = 300) -> str:
    "The launch's output once the launcher ends; whatever of it is still running is killed, pass or fail."
    try:
        p.wait(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        _kill_tagged(p.tag)  # nothing left behind for the next test, nor holding the test's output
        p.wait()
        p.log.seek(0)
        out = p.log.read()
        p.log.close()
    if timed_out:
        pytest.fail(f"the launch did not end in {timeout:.0f} s:\n{out}")
    assert p.returncode == 0, out
    return out


def test_a_failed_launch_fails_at_once_leaving_no_worker_behind(tmp_path):
    """A launcher that fails while a worker it started (in a session of its own, as a restarted one can be) runs
    on: the test fails at once, and the worker is gone (it held the output pipe open: the test hung instead)."""
    import time

    spawn = ("import subprocess, sys; w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], "
             "start_new_session=True); print('worker', w.pid, flush=True); sys.exit(1)")
    start = time.perf_counter()
    p = _launch(tmp_path, {}, [sys.executable, "-c", spawn])
    with pytest.raises(AssertionError) as e:
        _finish(p, timeout=60)
    assert time.perf_counter() - start < 30
    worker = int(str(e.value).split("worker ")[1].split()[0])
    time.sleep(0.2)
    assert not Path(f"/proc/{worker}").exists() or "Z" in Path(f"/proc/{worker}/stat").read_text().split()[2]


def _curve(folder) -> list[tuple]:
    "Per epoch: the losses and accuracy, as recorded (times left out)."
    return [(h["train_loss"], h["valid_loss"], h["accuracy"]) for h in load_results(folder).history]


# 48 training images (3 batches of 8 per rank), 21 validation images (not divisible by 2)
FAST = dict(name="cnn", classes=3, subset=(16, 7), size=32, presize=40, bs=8, epochs=3, seed=3, fast_data=True)


@pytest.fixture(scope="module")
def fast_ddp(imagenette, tmp_path_factory):
    "A two-rank run on the fast path (the cache built in a folder of its own), as torchrun --nproc_per_node 2 runs it."
    tmp = tmp_path_factory.mktemp("fast_ddp")
    env = {**os.environ, "RESNETS_CACHE": str(tmp / "cache")}
    script = tmp / "run_resumable.py"
    script.write_text(textwrap.dedent(RUN))
    p = subprocess.run([*_torchrun_cmd(29521), str(script), json.dumps({**FAST, "data": str(imagenette),
                        "out": str(tmp / "run")})], capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    return tmp, p.stdout + p.stderr


@pytest.mark.slow
def test_the_fast_path_trains_distributed_with_the_cache_built_once(imagenette, fast_ddp):
    tmp, log = fast_ddp
    out = tmp / "run"
    assert log.count("decoding 69 images once") == 1, "one rank built the cache, the other waited and read it"
    r = load_results(out)
    assert r.finished and len(r.history) == 3 and r.settings["world_size"] == 2 and r.settings["fast_data"]
    # the recorded accuracy is the whole validation set's: the final weights scored in one process agree
    # and so do they through the chapter's pipeline, whose validation tensors the fast path's equal to 1e-4
    opts = {k: v for k, v in FAST.items() if k not in ("name", "epochs")}
    for fast in (True, False):
        learn, _ = build("cnn", data=imagenette, num_workers=0, verbose=False, **{**opts, "fast_data": fast})
        learn.model.load_state_dict(load_checkpoint(out)["model"])
        valid_loss, acc = learn.validate()  # (2 classes: no top-5)
        assert acc == pytest.approx(r.history[-1]["accuracy"], abs=1e-6), fast
        assert valid_loss == pytest.approx(r.history[-1]["valid_loss"], rel=1e-3), fast  # (bf16 where the CPU has it)
    # rank 0 drew the interpretation from every rank's predictions
    assert (out / "confusion_matrix.png").exists() and (out / "top_losses.png").exists()
    assert set(r.per_class_accuracy) == set(learn.dls.vocab)
    cm = sum(round(a * 7) for a in r.per_class_accuracy.values())
    assert cm == round(acc * 21), "per-class accuracy over the 21 validation images, each counted once"


@pytest.mark.slow
def test_a_distributed_run_resumes_only_with_its_world_size(fast_ddp, imagenette, tmp_path):
    import shutil

    tmp, _ = fast_ddp
    copy = shutil.copytree(tmp / "run", tmp_path / "run")
    opts = {k: v for k, v in FAST.items() if k != "name"}
    with pytest.raises(InputError, match="cannot resume .* with 1 process.*trained by 2.*torchrun, 2 processes"):
        run("cnn", data=imagenette, out=copy, resume=True, progress=False, num_workers=0, **opts)


@pytest.mark.slow
def test_two_nodes_give_what_one_node_with_as_many_processes_gives(fast_ddp, imagenette, tmp_path):
    "Two torchrun launchers of one process each (c10d rendezvous on 127.0.0.1) train as one launcher of two."
    tmp, _ = fast_ddp
    torchrun = Path(sys.executable).with_name("torchrun")
    opts = {**FAST, "data": str(imagenette), "out": str(tmp_path / "run")}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as torchrun sets it for 2 processes a node (threads change bits)
    nodes = [_launch(tmp_path, opts, [str(torchrun), "--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend",
                                      "c10d", "--rdzv-endpoint", "127.0.0.1:29523", "--rdzv-id", "two-nodes"], env)
             for _ in range(2)]
    logs = [_finish(p) for p in nodes]
    assert sum("rank 1 of 2 trained" in log for log in logs) == 1, logs
    assert _curve(tmp_path / "run") == _curve(tmp / "run")


@pytest.mark.slow
def test_an_elastic_fine_tuning_run_killed_after_its_frozen_epoch_ends_as_an_uninterrupted_one(fast_ddp, imagenette,
                                                                                               tmp_path):
    """torchrun --max-restarts: rank 1 is SIGKILLed in the middle of the first unfrozen epoch; torchrun restarts
    both workers, which resume from the checkpoint of the frozen epoch by themselves and end with the history of an
    uninterrupted run (the same seed, the same launch)."""
    tmp, _ = fast_ddp
    torchrun = Path(sys.executable).with_name("torchrun")
    tune = {**FAST, "data": str(imagenette), "init": str(tmp / "run"), "epochs": 2, "freeze_epochs": 1}
    # c10d rendezvous, as torchrun's docs advise for restarts. Before the library joined the group under a prefix of
    # its attempt (distributed.join_process_group), restarted gloo workers read the dead group's addresses: a hang
    # or "connection refused" in connectFullMesh, once in three or four here, and every restart in a row under CI.
    launch = lambda port: [str(torchrun), "--nproc_per_node", "2", "--max-restarts", "3", "--rdzv-backend", "c10d",  # noqa: E731
                           "--rdzv-endpoint", f"127.0.0.1:{port}"]
    whole = _finish(_launch(tmp_path, {**tune, "out": str(tmp_path / "whole")}, launch(29525)))
    killed = _finish(_launch(tmp_path, {**tune, "out": str(tmp_path / "killed"), "kill": 1}, launch(29527)))
    assert "resuming" not in whole and "resuming" in killed and "after epoch 1 of" in killed, killed
    assert "-9" in killed or "SIGKILL" in killed or "Signals.SIGKILL" in killed, "rank 1 died by SIGKILL"
    assert len(_curve(tmp_path / "whole")) == 3 and _curve(tmp_path / "killed") == _curve(tmp_path / "whole")
    assert load_results(tmp_path / "killed").finished


@pytest.mark.parametrize("local_rank, gpus, cuda, expected", [
    (0, 0, True, ("gloo", None)),  # a CPU machine
    (1, 2, True, ("nccl", "cuda:1")),  # each rank on its own GPU (every rank was on cuda:0)
    (0, 2, True, ("nccl", "cuda:0")),
    (1, 1, True, ("gloo", None)),  # two ranks, one GPU: NCCL cannot share it; the CPU, not cuda:0 twice
    (0, 4, False, ("gloo", None)),  # a run kept on the CPU of a GPU machine stays on gloo
])
def test_each_rank_gets_its_own_gpu_or_gloo_on_the_cpu(local_rank, gpus, cuda, expected):
    from resnets.distributed import backend_for

    assert backend_for(local_rank, gpus, cuda) == expected
