"""Data-parallel runs: two CPU processes (gloo) launched by torchrun train one experiment together."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnets import build, load_results
from resnets.checkpoint import CHECKPOINT, load_checkpoint

SETTINGS = dict(classes=2, subset=24, size=32, presize=40, bs=8, epochs=2, seed=3)


def _torchrun(data, out: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this Python")
    opts = [a for k, v in SETTINGS.items() for a in (f"--{k}", str(v))]
    cmd = [str(torchrun), "--nproc_per_node", str(nproc), "--master_port", "29517", "-m", "resnets", "run", "cnn",
           "--data", str(data), *opts, "--workers", "0", "--no-progress", "--out", str(out)]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_ranks_train_once_with_metrics_over_the_whole_validation_set(imagenette, tmp_path):
    out = tmp_path / "runs" / "cnn-ddp"
    p = _torchrun(imagenette, out)
    assert p.returncode == 0, p.stdout + p.stderr
    # both ranks trained, each on half of every epoch; only rank 0 printed the summary and wrote the folder
    assert "rank 1 of 2 trained" in p.stderr, p.stderr
    assert p.stdout.count("saved ") == 1 and p.stdout.count("accuracy ") == 1, p.stdout
    assert sorted(x.name for x in (tmp_path / "runs").iterdir()) == ["cnn-ddp"]
    r = load_results(out)
    assert r.finished and len(r.history) == 2 and r.settings["world_size"] == 2
    assert all(0 <= h["accuracy"] <= 1 and h["train_loss"] > 0 for h in r.history)

    # the recorded accuracy is the whole validation set's, not one rank's half: evaluate the final weights
    # in one process on the same validation set and compare
    learn, _ = build("cnn", imagenette, **{k: v for k, v in SETTINGS.items() if k != "epochs"}, num_workers=0)
    learn.model.load_state_dict(load_checkpoint(out)["model"])
    valid_loss, acc, _top5 = learn.validate()
    assert acc == pytest.approx(r.history[-1]["accuracy"], abs=1e-6)
    assert valid_loss == pytest.approx(r.history[-1]["valid_loss"], rel=1e-4)


@pytest.mark.slow
def test_a_distributed_run_refuses_resume(imagenette, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this Python")
    (tmp_path / "run").mkdir()
    torch.save({}, tmp_path / "run" / CHECKPOINT)
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", "29518", "-m", "resnets", "run", "cnn",
           "--data", str(imagenette), "--resume", "--out", str(tmp_path / "run")]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "support neither --resume" in p.stderr + p.stdout
