"""Data-parallel runs: two CPU processes (gloo) launched by torchrun train one experiment together."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from resnets import build, load_results
from resnets.checkpoint import LEGACY_CHECKPOINT, load_checkpoint

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
           "--data", str(data), *opts, "--workers", "0", "--no-progress", "--out", str(out)]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


# Each rank saves the first training batch that `build` gives it, in file order: the same images on every rank,
# so only the augmentation's random draws can tell the ranks apart.
FIRST_BATCH = """
    import sys

    import torch
    from fastai.torch_core import rank_distrib

    from resnets import build

    learn, _ = build("cnn", data=sys.argv[1], classes=2, subset=8, size=32, presize=40, bs=8, seed=3, num_workers=0,
                     verbose=False)
    xb, yb = learn.dls.train.new(shuffle=False).one_batch()
    torch.save({"x": xb.as_subclass(torch.Tensor), "y": yb.as_subclass(torch.Tensor)},
               f"{sys.argv[2]}/rank{rank_distrib()}.pt")
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
    valid_loss, acc, _top5 = learn.validate()
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
                           capture_output=True, text=True, timeout=600)  # fmt: skip
        assert p.returncode == 0, p.stdout + p.stderr
        batches.append([torch.load(tmp_path / launch / f"rank{r}.pt") for r in (0, 1)])
    (a0, a1), (b0, b1) = batches
    assert torch.equal(a0["y"], a1["y"]), "both ranks were meant to load the same images"
    assert not torch.equal(a0["x"], a1["x"]), "rank 1 drew rank 0's crops and flips: every rank sees the same views"
    # seeded by rank: a second launch repeats each rank's draws exactly
    assert torch.equal(a0["x"], b0["x"]) and torch.equal(a1["x"], b1["x"])


@pytest.mark.slow
def test_a_distributed_run_refuses_resume(imagenette, tmp_path):
    (tmp_path / "run").mkdir()
    torch.save({}, tmp_path / "run" / LEGACY_CHECKPOINT)  # any checkpoint, of this version or an earlier one
    cmd = [*_torchrun_cmd(29518), "-m", "resnets", "run", "cnn",
           "--data", str(imagenette), "--resume", "--out", str(tmp_path / "run")]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "support neither --resume" in p.stderr + p.stdout
