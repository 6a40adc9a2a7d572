"""resnets.hub: a run exported as timm's save_for_hf folder loads back in timm with the same logits, and `push`
uploads that folder with a model card (tested up to the upload itself, offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from resnets import InputError, hub, run
from resnets.cli import main
from resnets.hub import export_timm, model_card, push

timm = pytest.importorskip("timm", reason="timm is an optional extra: pip install 'resnets[timm]'")


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory):
    "A full-width ResNet-18 trained one epoch on generated images: a network timm has."
    from conftest import make_tree

    data = make_tree(tmp_path_factory.mktemp("hub") / "data", classes=("cat", "dog", "owl"), n_train=4, n_valid=2)
    return run("resnet18", data=data, out=tmp_path_factory.mktemp("hub") / "run", size=32, presize=40, bs=4,
               epochs=1, progress=False, num_workers=0, seed=0)


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


def test_the_exported_config_describes_this_run_not_timm_s_weights(resnet_run, tmp_path):
    "save_for_hf copies the architecture's pretrained_cfg (tag ra2_in1k, its licence and origin): none of it is ours."
    cfg = json.loads((export_timm(resnet_run.folder, tmp_path / "hub") / "config.json").read_text())["pretrained_cfg"]
    assert not {"tag", "license", "origin_url", "hf_hub_id", "url", "paper_ids", "paper_name", "notes"} & set(cfg)
    assert cfg["description"].startswith("resnet18 trained from scratch with resnets")
    assert "ra2" not in json.dumps(cfg) and "ra2" not in model_card(resnet_run.folder)
    assert "trained from scratch" in model_card(resnet_run.folder)


@pytest.mark.parametrize("settings,origin", [
    ({"pretrained": True}, "fine-tuned from timm's resnet18d.ra2_in1k ImageNet weights (https://huggingface.co/timm/"
                           "resnet18d.ra2_in1k)"),
    ({"pretrained": "resnet18d.ra4_e3600_r224_in1k"}, "fine-tuned from timm's resnet18d.ra4_e3600_r224_in1k"),
    ({"pretrained": "hub/base"}, "fine-tuned from the weights in hub/base"),
    ({"pretrained": False, "init": "runs/base"}, "fine-tuned from the run runs/base"),
    ({"pretrained": None}, "trained from scratch"),
])
def test_the_starting_weights_are_said(settings, origin):
    assert hub._origin({"model": "resnet18", **settings}).startswith(origin)


@pytest.fixture
def no_network(monkeypatch):
    "The Hub's address a port where nothing listens: every request is refused at once, as on a machine offline."
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")  # so no stored token is read, or sent anywhere


def test_push_without_network_is_one_line_naming_the_fix(resnet_run, no_network, capsys, tmp_path):
    with pytest.raises(InputError) as e:
        push(resnet_run.folder, "someone/tiny-resnet18")
    msg = str(e.value)
    assert isinstance(e.value, hub.HubError) and "\n" not in msg and "could not reach the Hugging Face Hub" in msg
    assert "hf auth login" in msg and "$HF_TOKEN" in msg and f"resnets export {resnet_run.folder} --timm" in msg
    with pytest.raises(hub.HubError, match=f"{tmp_path / 'kept'} holds the folder to upload later"):
        push(resnet_run.folder, "someone/tiny-resnet18", folder=tmp_path / "kept")
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert main(["push", str(resnet_run.folder), "someone/tiny-resnet18"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("resnets push: error: could not reach") and "Traceback" not in err


def test_push_refused_by_the_hub_is_one_line_naming_the_token(resnet_run, monkeypatch):
    "A local server that answers every request as the Hub answers a bad token: 401."
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import huggingface_hub

    class Unauthorized(BaseHTTPRequestHandler):
        def do_POST(self):
            body = b'{"error": "Invalid credentials in Authorization header"}'
            self.send_response(401), self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body))), self.end_headers(), self.wfile.write(body)

        do_GET = do_POST

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Unauthorized)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    try:
        with pytest.raises(hub.HubError) as e:
            push(resnet_run.folder, "someone/tiny-resnet18")
    finally:
        server.shutdown(), server.server_close()
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("the Hugging Face Hub refused to upload to someone/tiny-resnet18 (")
    assert "401" in msg and "hf auth login" in msg and "--timm DIR" in msg


def test_a_network_timm_does_not_have_is_a_clear_error(generated_run, tmp_path):
    with pytest.raises(InputError, match="no timm architecture: timm's ResNet-D family is resnet10 --stem"):
        export_timm(generated_run.folder, tmp_path / "hub")
    with pytest.raises(InputError, match="no timm architecture"):
        model_card(generated_run.folder)


def test_export_timm_from_the_command_line(resnet_run, tmp_path, capsys):
    main(["export", str(resnet_run.folder), "--out", str(tmp_path / "m.resnets"), "--timm", str(tmp_path / "t")])
    assert "create_model('local-dir:" in capsys.readouterr().out and (tmp_path / "t" / "config.json").is_file()


def test_a_timm_export_on_a_full_disk_is_one_line_and_leaves_no_folder(resnet_run, tmp_path, monkeypatch):
    "Found in a trial: --timm on a full disk left an empty folder and a raw error."
    import errno
    import os

    import timm.models

    from resnets.files import DiskError

    def full(model, folder, **kw):  # writes part of the weights, then the disk is full
        os.makedirs(folder, exist_ok=True)
        (Path(folder) / "model.safetensors").write_bytes(b"\0" * 64)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(timm.models, "save_for_hf", full)
    with pytest.raises(DiskError, match="no space left on the disk"):
        export_timm(resnet_run.folder, tmp_path / "hub")
    assert not (tmp_path / "hub").exists() and not list(tmp_path.glob(".*tmp"))
