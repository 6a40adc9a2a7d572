"""resnets.hub: a run exported as timm's save_for_hf folder loads back in timm with the same logits, and `push`
uploads that folder with a model card (tested up to the upload itself, offline)."""

from __future__ import annotations

import json

import pytest
import torch

from resnets import InputError, run
from resnets.cli import main
from resnets.hub import export_timm, model_card, push

timm = pytest.importorskip("timm", reason="timm is an optional extra: pip install 'resnets[timm]'")


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory):
    "A full-width ResNet-18 trained one epoch on generated images: a network timm has."
    from conftest import make_tree

    data = make_tree(tmp_path_factory.mktemp("hub") / "data", classes=("cat", "dog", "owl"), n_train=4, n_valid=2)
    return run("resnet18", data=data, out=tmp_path_factory.mktemp("hub") / "run", size=32, presize=40, bs=4,
               epochs=1, progress=False, num_workers=0, seed=0)  # fmt: skip


def test_timm_loads_the_exported_folder_with_the_run_s_logits(resnet_run, tmp_path):
    out = export_timm(resnet_run.folder, tmp_path / "hub")
    assert (out / "model.safetensors").is_file() and not (out / "pytorch_model.bin").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "resnet18d" and config["num_classes"] == 3
    assert config["label_names"] == ["cat", "dog", "owl"]
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32] and config["pretrained_cfg"]["crop_pct"] == 1.0
    net = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    ours = resnet_run.learn.model.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert (net(x) - ours(x)).abs().max() <= 1e-5


def test_push_sends_the_folder_and_its_model_card(resnet_run, tmp_path, monkeypatch):
    import huggingface_hub

    sent = {}

    class FakeApi:
        def create_repo(self, repo_id, private=False, exist_ok=False):
            sent["repo"] = (repo_id, private)

        def upload_folder(self, repo_id, folder_path, commit_message):
            from pathlib import Path

            sent["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            sent["card"] = (Path(folder_path) / "README.md").read_text()
            net = timm.create_model(f"local-dir:{folder_path}", pretrained=True)  # what the Hub would serve
            sent["classes"] = net.num_classes
            return "ok"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert push(resnet_run.folder, "someone/tiny-resnet18") == "ok"
    assert sent["repo"] == ("someone/tiny-resnet18", False)
    assert sent["files"] == ["README.md", "config.json", "model.safetensors"] and sent["classes"] == 3
    card = sent["card"]
    assert "library_name: timm" in card and "hf-hub:someone/tiny-resnet18" in card and "resnet18d" in card
    assert f"{resnet_run.accuracy:.4f}" in card and "fastai 2." in card


def test_a_network_timm_does_not_have_is_a_clear_error(generated_run, tmp_path):
    with pytest.raises(InputError, match="no timm architecture: timm's ResNet-D family is resnet10 --stem"):
        export_timm(generated_run.folder, tmp_path / "hub")
    with pytest.raises(InputError, match="no timm architecture"):
        model_card(generated_run.folder)


def test_export_timm_from_the_command_line(resnet_run, tmp_path, capsys):
    main(["export", str(resnet_run.folder), "--out", str(tmp_path / "m.resnets"), "--timm", str(tmp_path / "t")])
    assert "create_model('local-dir:" in capsys.readouterr().out and (tmp_path / "t" / "config.json").is_file()
