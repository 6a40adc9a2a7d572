"""resnets.studies: the chapter's claims as studies of matched arms, run, tabled, plotted and resumed."""

import json
import subprocess
import sys

import pytest
import torch

from resnets import EXPERIMENTS, STUDIES, configure, create_model, get_study, load_results, run_study
from resnets.checkpoint import CHECKPOINT
from resnets.models import count_flops
from resnets.studies import Arm, Study

TINY_STUDY = dict(classes=2, subset=8, size=32, presize=40, bs=8, epochs=1, num_workers=0)


def test_every_arm_is_a_registered_experiment_with_a_unique_label():
    for study in STUDIES.values():
        assert study.arms and study.seeds and study.claim
        assert len({a.label for a in study.arms}) == len(study.arms)
        assert all(a.experiment in EXPERIMENTS for a in study.arms)


def test_the_bottleneck_arms_are_matched_in_compute_not_in_parameters():
    arms = get_study("bottleneck").arms
    models = {a.label: create_model(EXPERIMENTS[a.experiment].model) for a in arms}
    flops = [count_flops(m, 64) for m in models.values()]
    params = [sum(p.numel() for p in m.parameters()) for m in models.values()]
    assert max(flops) / min(flops) < 1.15  # within 15%: ResNet-34 against ResNet-50
    assert params[1] > 1.1 * params[0]  # yet the bottleneck net holds more parameters
    assert {a.options["size"] for a in arms} == {64} and {a.options["subset"] for a in arms} == {200}


def test_the_presize_arms_differ_only_in_presize():
    arms = [configure(a.experiment, verbose=False, **a.options) for a in get_study("presize").arms]
    assert [e.presize for e in arms] == [64, 80, 96] and {e.size for e in arms} == {64}
    assert len({(e.model, e.epochs, e.lr, e.bs, e.augment, e.data) for e in arms}) == 1


def test_the_degradation_arms_differ_only_in_depth_and_shortcuts():
    arms = [EXPERIMENTS[a.experiment] for a in get_study("degradation").arms]
    assert [e.model for e in arms] == ["plain20", "plain56", "res20", "res56"]
    assert len({(e.size, e.presize, e.subset, e.epochs, e.lr, e.bs) for e in arms}) == 1


def test_a_study_runs_writes_its_table_and_plot_and_resumes(imagenette, tmp_path, monkeypatch):
    out = tmp_path / "deg"
    found = run_study("degradation", out, data=imagenette, **TINY_STUDY)
    assert [r["arm"] for r in found.rows] == ["plain-20", "plain-56", "res-20", "res-56"]
    for row in found.rows:
        assert row["params"] == sum(p.numel() for p in create_model(row["model"]).parameters())
        assert row["gflops_per_image"] > 0 and row["epoch_time"] > 0 and 0 <= row["accuracy"] <= 1
        assert row["train_loss"] == found.runs[row["arm"]][0].history[-1]["train_loss"]
    saved = json.loads((out / "study.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(found.rows)) and len(saved["runs"]) == 4
    assert (out / "study.png").read_bytes()[:4] == b"\x89PNG"
    assert "| plain-56 | 1 |" in found.table()

    # Run again: the finished runs are read back, nothing trains. Mark one unfinished: only it trains.
    from resnets import studies

    calls = []
    real_run = studies.run
    record = lambda name, **kw: calls.append((name, kw.get("resume"))) or real_run(name, **kw)
    monkeypatch.setattr(studies, "run", record)
    again = run_study("degradation", out, data=imagenette, **TINY_STUDY)
    assert calls == [] and again.rows == found.rows
    # an arm interrupted after a checkpoint continues from it; one interrupted before any starts again
    for arm in ("res-56-seed42", "plain-20-seed42"):
        res = load_results(out / arm)
        res.finished = False
        res.save(out / arm, plot=False)
    (out / "plain-20-seed42" / CHECKPOINT).unlink()
    run_study("degradation", out, data=imagenette, **TINY_STUDY)
    assert sorted(calls) == [("plain20", None), ("res56", True)]
    assert load_results(out / "res-56-seed42").finished and load_results(out / "plain-20-seed42").finished


def test_bad_study_inputs_fail_before_anything_trains(tmp_path):
    with pytest.raises(ValueError, match="degradation"):
        run_study("degradations", tmp_path / "a")
    with pytest.raises(ValueError, match="seeds"):
        run_study("degradation", tmp_path / "b", seeds=[])
    with pytest.raises(ValueError, match="epochs"):
        run_study("degradation", tmp_path / "c", epochs=0)
    with pytest.raises(ValueError, match="unknown experiment"):
        run_study(Study("x", "a claim", (Arm("a", "resnet19"),)), tmp_path / "d")
    assert not any(tmp_path.iterdir())


def test_a_study_from_the_cli(imagenette, tmp_path):
    args = ["--data", str(imagenette), "--classes", "2", "--subset", "8", "--size", "32", "--presize", "40", "--bs",
            "8", "--epochs", "1", "--num-workers", "0", "--out", str(tmp_path / "b"), "--seeds", "3"]
    p = subprocess.run([sys.executable, "-m", "resnets", "study", "bottleneck", *args],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "| bottleneck (resnet50) | 1 |" in p.stdout and "img/s" in p.stdout
    assert (tmp_path / "b" / "bottleneck__resnet50_-seed3" / "results.json").exists()
    p = subprocess.run([sys.executable, "-m", "resnets", "study", "bottleneck", "--epochs", "0"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 2 and "epochs must be" in p.stderr and "Traceback" not in p.stderr


def test_every_setting_given_to_a_study_reaches_every_arm(tmp_path, monkeypatch):
    "No study call drops a setting (an earlier version lost fast_data): each arm's run() gets all of them."
    from resnets import studies

    seen = []

    def fake_run(name, **kw):
        seen.append(kw)
        raise KeyboardInterrupt  # stop after the first arm's call

    monkeypatch.setattr(studies, "run", fake_run)
    with pytest.raises(KeyboardInterrupt):
        run_study("regularisation", tmp_path / "s", fast_data=True, precision="fp32", flip=False, epochs=1)
    assert {k: seen[0][k] for k in ("fast_data", "precision", "flip", "epochs", "size")} == \
        dict(fast_data=True, precision="fp32", flip=False, epochs=1, size=64)
    with pytest.raises(ValueError, match="unknown setting sise"):
        run_study("regularisation", tmp_path / "s", sise=1)


def test_the_noisy_study_changes_only_the_training_labels(imagenette, tmp_path, monkeypatch):
    from resnets.sources import resolve_source

    arms = get_study("noisy").arms
    assert [a.options["label_col"] for a in arms] == ["noisy_labels_0", "noisy_labels_5", "noisy_labels_50"]
    assert {a.experiment for a in arms} == {"speedrun"} and len({a.options["data"] for a in arms}) == 1
    monkeypatch.setenv("RESNETS_DATA", str(imagenette.parent))
    assert resolve_source(arms[0].options["data"]) == imagenette / "noisy_imagenette.csv"
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    found = run_study("noisy", tmp_path / "noisy", **{**TINY_STUDY, "subset": (16, 4)}, width=0.25, tta=False)
    assert [r["arm"] for r in found.rows] == [a.label for a in arms]
    from resnets.data import class_label

    def wrong(ds):  # how many labels are not the image's folder (its true class)
        return sum(ds.vocab[int(y)] != class_label(f) for f, (_, y) in zip(ds.items, ds))

    clean, _, noisy = (found.runs[a.label][0].learn.dls for a in arms)
    assert wrong(clean.train_ds) == 0 and wrong(noisy.train_ds) > 0, "50 % of the training labels changed"
    assert wrong(noisy.valid_ds) == 0 and wrong(clean.valid_ds) == 0, "scored on the clean validation labels"


@pytest.mark.parametrize("cuda", [False, True])
def test_a_study_s_throughput_is_timed_where_and_how_its_runs_train(monkeypatch, cuda):
    "The bottleneck study's step throughput was always timed on the CPU in fp32, even on a GPU (fp16 there)."
    from resnets import studies
    from resnets.precision import choose_precision

    calls = []
    monkeypatch.setattr(studies, "bench_models", lambda names, **kw: calls.append(kw) or [{"train_images_per_s": 1.0}])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "a GPU")
    arm = get_study("bottleneck").arms[0]
    row = studies._compute(arm, {}, throughput=True)
    expected = ("cuda", "fp16") if cuda else ("cpu", choose_precision("auto", "cpu")[0])
    assert (calls[0]["device"], calls[0]["precision"]) == expected
    assert (row["throughput_device"], row["throughput_precision"]) == expected
