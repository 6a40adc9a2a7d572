"""The benchmark suite's pieces and the prepared GPU script's CPU path (figures are not asserted: benchmarks)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from resnets.bench import (
    STAGES,
    bench_data,
    bench_models,
    format_profile,
    format_suite,
    matmul_peak,
    profile_training,
    run_suite,
)


def test_model_variants_and_precision_checks():
    (row,) = bench_models(["cnn"], size=32, bs=2, repeats=1, variants=("eager", "channels_last"))
    assert row["eager_images_per_s"] > 0 and row["channels_last_images_per_s"] > 0
    with pytest.raises(ValueError, match="variants"):
        bench_models(["cnn"], variants=("eager", "jit"))
    with pytest.raises(ValueError, match="CUDA only"):
        bench_models(["cnn"], precision="fp16", device="cpu")
    (bf16,) = bench_models(["cnn"], size=32, bs=2, repeats=1, precision="bf16")  # CPU autocast, native or emulated
    assert bf16["precision"] == "bf16" and bf16["eager_images_per_s"] > 0
    assert matmul_peak(n=128, repeats=2) > 0


def test_suite_writes_every_section(imagenette, tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    report = run_suite(imagenette, tmp_path / "b.json", models={"cnn": 32}, repeats=1, subset=4, data_bs=8)
    saved = json.loads((tmp_path / "b.json").read_text())
    assert saved["models"][0]["model"] == "cnn" and 0 < saved["models"][0]["fraction_of_matmul_peak"]
    rows = {r["precision"]: r for r in saved["models"]}  # each ratio to fp32 timed in this call
    assert set(rows) == ({"fp32", "fp16", "bf16"} if torch.cuda.is_available() else {"fp32", "bf16"})
    for low in set(rows) - {"fp32"}:
        assert rows[low]["speedup_over_fp32"] == rows[low]["eager_images_per_s"] / rows["fp32"]["eager_images_per_s"]
    assert "vs fp32" in format_suite(report)
    assert ("native bf16" in format_suite(report)) is not torch.cuda.is_available()
    assert saved["data"]["stock_images_per_s"] > 0 and saved["data"]["fast_images_per_s"] > 0
    assert saved["epoch"]["settings"]["n_train"] == 40 and saved["epoch"]["speedup"] > 0
    assert saved["profile"]["fast"]["images_per_s"] > 0
    assert saved == json.loads(json.dumps(report))
    small = bench_data(imagenette, bs=128, subset=2, repeats=1)  # 20 images: the batch size they were timed at
    assert small["bs"] == 8 and small["stock_images_per_s"] > 0


def test_profile_splits_a_training_step_into_its_stages(imagenette, tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    p = profile_training("cnn", imagenette, batches=3, warmup=1, classes=2, subset=4, size=32, presize=40, bs=2,
                         num_workers=0)
    for key in ("stock", "fast"):  # fastai's own loop, split at its events
        shares = {k: p[key][f"{k}_fraction"] for k in STAGES}
        assert all(0 < f < 1 for f in shares.values()) and sum(shares.values()) == pytest.approx(1)
        assert p[key]["images_per_s"] > 0 and p[key]["precision"] in ("fp32", "bf16", "fp16")  # (fp16: a GPU)
    assert "stock" in format_profile(p) and "augmentation" in format_profile(p)
    assert profile_training("cnn", imagenette, batches=30, warmup=1, classes=2, subset=4, size=32, presize=40,
                            bs=2, num_workers=0)["batches"] == 3  # an epoch of 4 batches, one of them warm-up
    with pytest.raises(ValueError, match="leave none to time"):
        profile_training("cnn", imagenette, classes=2, subset=4, size=32, presize=40, bs=4, num_workers=0)


def _gpu_luggage(tmp_path, n_train: int = 8, n_valid: int = 4):
    "What `make gpu-data` leaves, small: generated images with their manifest.json, and a folder of wheels."
    from conftest import make_tree

    data = make_tree(tmp_path / "gpu-data", n_train=n_train, n_valid=n_valid)
    n = sum(1 for _ in data.rglob("*.jpg"))
    (data / "manifest.json").write_text(json.dumps({"what": "test", "source": "generated", "quality": 40,
                                                    "images": n, "bytes": 1000}))
    wheels = tmp_path / "whl"
    wheels.mkdir()
    (wheels / "fastai-2.8.12-py3-none-any.whl").write_bytes(b"x" * 100)
    return data, wheels


def _gpu_sh(tmp_path, *args, **env):
    env = {**os.environ, "PYTHON": sys.executable, "RESNETS_CACHE": str(tmp_path / "cache"),
           "RUNS": str(tmp_path / "runs"), **env}
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu.sh"), *args], capture_output=True, text=True,
                          timeout=900, env=env, cwd=tmp_path)


def test_the_gpu_plan_checks_everything_but_cuda(tmp_path):
    """`gpu.sh --plan` on a CPU: the data copy and its manifest, the wheels, the upload within 64 MiB, every command
    parsing, the gpu tests collected, and a summary.json of the schema with every step planned, none run."""
    data, wheels = _gpu_luggage(tmp_path)
    p = _gpu_sh(tmp_path, "--plan", str(tmp_path / "out"), DATA=str(data), WHEELS=str(wheels), PLAN_ANYWHERE="1",
                MIN_IMAGES="1")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "MiB of 64" in p.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    sys.path.insert(0, str(ROOT / "scripts"))
    from gpu_summary import check

    assert check(summary) == [] and summary["mode"] == "plan" and summary["data"]["quality"] == 40
    names = [s["name"] for s in summary["steps"]]
    assert names[0] == "pytest -m gpu" and {"cnn", "resnet18", "speedrun", "bench all"} <= set(names)
    assert all(s["exit_code"] is None for s in summary["steps"]) and summary["not_run"]
    assert sum(s["timeout_s"] for s in summary["steps"]) <= 540, "the steps fit the device's 10-minute command"
    assert check({**summary, "steps": [{"name": "x"}]}) != [], "the check can fail"
    (data / "manifest.json").unlink()
    p = _gpu_sh(tmp_path, "--plan", str(tmp_path / "again"), DATA=str(data), WHEELS=str(wheels), PLAN_ANYWHERE="1")
    said = p.stdout + p.stderr  # (the script logs both to log.txt and its output)
    assert p.returncode == 2 and "make gpu-data" in said and "synthetic images are not trained on" in said
    p = _gpu_sh(tmp_path, "--plan", str(tmp_path / "inside"), DATA=str(_gpu_luggage(tmp_path / "b")[0]),
                WHEELS=str(wheels), MIN_IMAGES="1")
    assert p.returncode == 2 and "outside the repository" in p.stdout + p.stderr


@pytest.mark.slow
def test_gpu_script_runs_every_step_on_a_cpu_with_smoke(tmp_path):
    "SMOKE=1 on a CPU: every step runs end to end, the summary has each run's accuracy and each step's exit code."
    data, wheels = _gpu_luggage(tmp_path, n_train=24)  # (the profile times batches after two warm-up ones)
    visible = "" if not torch.cuda.is_available() else os.environ.get("CUDA_VISIBLE_DEVICES", "")
    p = _gpu_sh(tmp_path, str(tmp_path / "out"), DATA=str(data), WHEELS=str(wheels), SMOKE="1",
                CUDA_VISIBLE_DEVICES=visible)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert p.returncode == summary["exit_code"] == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert set(summary["runs"]) == {"cnn", "res_cnn", "double_res_cnn", "resnet18", "resnet18-fast", "speedrun"}
    assert all(r["finished"] and r["accuracy"] is not None for r in summary["runs"].values())
    assert all(s["exit_code"] == 0 for s in summary["steps"]) and (tmp_path / "out" / "bench.txt").exists()
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == ["bench.json", "bench.txt", "log.txt",
                                                                     "summary.json"]


def test_bench_conv1x1_times_both_and_checks_values():
    from resnets.bench import bench_conv1x1

    (row,) = bench_conv1x1(shapes=((2, 16, 8, 5),), repeats=2)
    assert row["conv2d_ms"] > 0 and row["einsum_ms"] > 0 and row["max_abs_diff"] < 1e-4
    assert row["einsum_over_conv2d"] == pytest.approx(row["einsum_ms"] / row["conv2d_ms"])


def test_bench_models_reports_params_flops_and_speed():
    from resnets.bench import bench_models

    (row,) = bench_models(["cnn"], size=32, bs=2, repeats=1)
    assert row["params"] == 395_674 and row["gflops_per_image"] > 0 and row["train_images_per_s"] > 0


def test_bench_models_from_the_cli_passes_device_and_variants(monkeypatch, capsys):
    from resnets import bench
    from resnets.cli import main

    seen = {}

    def fake(names, **kw):
        seen.update(kw, names=names)
        speed = 2.0 if kw.get("precision") == "bf16" else 1.0
        speeds = {f"{v}_images_per_s": speed for v in kw["variants"]}
        return [{"model": n, "params": 1, "gflops_per_image": 0.1, **speeds} for n in names]

    monkeypatch.setattr(bench, "bench_models", fake)
    main(["bench", "models", "--models", "cnn", "--size", "32", "--device", "cpu", "--variants", "eager"])
    assert (seen["names"], seen["device"], tuple(seen["variants"]), seen["size"]) == (["cnn"], "cpu", ("eager",), 32)
    out = capsys.readouterr().out
    assert "bf16 eager" in out and "2.00x" in out and seen["precision"] == "bf16"  # the last call: bf16, for the ratio


def test_bench_loop_puts_the_library_s_loop_beside_the_model_step_and_the_peak(tree, tmp_path, monkeypatch, capsys):
    "One call: the matmul peaks, the model's step alone and both pipelines' loops, each as a fraction of the peak."
    from resnets import bench
    from resnets.cli import main

    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    r = bench.bench_loop("cnn", tree, bs=2, batches=2, warmup=1, repeats=1, size=32, presize=40, num_workers=0)
    assert set(r["matmul_gflops"]) == {"fp32", "bf16"} and r["gflops_per_image"] > 0
    assert set(r["images_per_s"]) == {"model step alone", "library loop, chapter pipeline", "library loop, fast path"}
    peak = r["matmul_gflops"]["bf16" if r["precision"] == "bf16" else "fp32"]
    for k, ips in r["images_per_s"].items():
        assert ips > 0 and r["fraction_of_peak"][k] == pytest.approx(3 * r["gflops_per_image"] * ips / peak)
    assert "library loop, fast path" in bench.format_loop(r) and "of peak" in bench.format_loop(r)
    monkeypatch.setattr(bench, "bench_loop", lambda *a, **kw: {**r, "args": (a, kw)})
    main(["bench", "loop", "--data", str(tree), "--experiment", "resnet50", "--size", "64", "--bs", "8",
          "--out", str(tmp_path / "loop.json")])
    assert "model step alone" in capsys.readouterr().out
    saved = json.loads((tmp_path / "loop.json").read_text())
    assert saved["args"] == [["resnet50", str(tree)], {"bs": 8, "repeats": 5, "subset": None, "size": 64}]


def test_every_section_measures_true_fp32_with_the_same_cudnn_settings(monkeypatch):
    """cuDNN's default TF32 made the "fp32" model column TF32 while the peak it is divided by was true fp32 (over
    100 % of the peak), and its autotuner differed between sections: each measurement now runs under the same
    settings (autotuner on, TF32 off in convolutions and matmuls), and they are put back afterwards."""
    from resnets import bench

    seen, real = [], bench.median_seconds

    def spy(fn, **kw):
        seen.append((torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
                     torch.get_float32_matmul_precision()))
        return real(fn, **kw)

    monkeypatch.setattr(bench, "median_seconds", spy)
    before = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    torch.set_float32_matmul_precision("high")  # TF32 allowed, as a training script might leave it
    try:
        bench.bench_models(["cnn"], size=32, bs=2, repeats=1)
        bench.matmul_peak(n=64, repeats=1)
        assert seen == [(True, False, "highest")] * 2
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before[2])
    assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32) == before[:2]


def test_a_variant_that_fails_is_a_cell_not_the_end_of_the_suite(monkeypatch):
    "torch.compile failing (no compiler, a graph break it cannot take) leaves its cell empty, with the error kept."
    from resnets import bench

    def no_compiler(model, *a, **k):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", no_compiler)
    (row,) = bench.bench_models(["cnn"], size=32, bs=2, repeats=1, variants=("eager", "compile"))
    assert row["eager_images_per_s"] > 0 and row["compile_images_per_s"] is None
    assert "no C++ compiler found" in row["compile_error"]
    assert "failed" in bench._cell(row, "compile") and bench._cell(row, "channels_last").strip() == "-"
