"""Export a trained run to one file, predict from it (Python and CLI), TorchScript equal to eager, clear errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY
from resnets import IMAGENETTE_NAMES, InputError, MissingFile, export, export_torchscript, load, run
from resnets.checkpoint import LEGACY_CHECKPOINT, load_checkpoint
from resnets.data import find_items
from resnets.deploy import FORMAT, ONNX_OPSET, export_onnx


@pytest.fixture(scope="module")
def mnist_run(mnist_tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "mnist"
    return run("mnist_pool", data=mnist_tiny, epochs=2, out=out, progress=False, num_workers=0, seed=0)


ONNX_TOLERANCE = 1e-4  # largest |logit difference| accepted between onnxruntime and eager torch (fp32 both)


class _Payload:
    "Pickles as a call of `exec`: whatever unpickles it creates the file `marker`."

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def _refused(cmd: list[str], message: str) -> None:
    "The command line fails with exit code 2 and one line of error saying `message`, no traceback."
    p = subprocess.run([sys.executable, "-m", "resnets", *cmd], capture_output=True, text=True)
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert last.startswith(f"resnets {cmd[0]}: error: ") and message in last, p.stderr


def test_k_is_checked_by_the_predictor():
    from resnets.deploy import Predictor

    with pytest.raises(InputError, match="k must be an integer >= 1"):
        Predictor.predict(None, "x.jpg", k=0)


def test_exported_model_predicts_as_well_as_it_validated(mnist_run, mnist_tiny):
    path = export(mnist_run.folder)
    predictor = load(path)
    assert predictor.vocab == ["3", "7"] and predictor.meta["resize"] == 28
    files = [f for f in find_items(mnist_tiny)[0] if f.parent.parent.name == "valid"]
    hits = 0
    for f in files:
        (top, second) = predictor.predict(f)
        assert top[2] >= second[2] and abs(top[2] + second[2] - 1) < 1e-5
        hits += top[0] == f.parent.name
    # the same images through the same (validation) preprocessing: the run's accuracy, give or take resampling
    assert abs(hits / len(files) - mnist_run.accuracy) < 0.03


def test_torchscript_matches_the_model_on_real_images(mnist_run, mnist_tiny, tmp_path):
    predictor = load(export(mnist_run.folder, tmp_path / "m.resnets"))
    images = sorted((mnist_tiny / "valid" / "7").glob("*.png"))[:20]
    assert export_torchscript(predictor, tmp_path / "m.pt", images) < 1e-5
    with pytest.warns(FutureWarning):  # torch 2.14 marks TorchScript deprecated
        traced = torch.jit.load(str(tmp_path / "m.pt"))
    best = predictor.predict(images[0])[0][0]
    assert traced(predictor.preprocess(images[0])).argmax().item() == predictor.vocab.index(best)


def test_onnx_matches_the_model_on_real_images_and_carries_its_preprocessing(mnist_run, mnist_tiny, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    predictor = load(export(mnist_run.folder, tmp_path / "m.resnets"))
    images = sorted((mnist_tiny / "valid" / "3").glob("*.png"))[:10] + sorted((mnist_tiny / "valid" / "7").glob(
        "*.png"))[:10]
    diff = export_onnx(predictor, tmp_path / "m.onnx", images)
    assert 0 < diff < ONNX_TOLERANCE, "compared on real images (and not all identical by accident)"
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert proto.opset_import[0].version == ONNX_OPSET
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["vocab"]) == predictor.vocab and "centre-cropped" in meta["preprocessing"]
    onnx_predictor = load(tmp_path / "m.onnx")
    assert onnx_predictor.model is None, "onnxruntime runs it, not torch"
    batch = torch.cat([predictor.preprocess(i) for i in images[:3]])
    torch.testing.assert_close(onnx_predictor.logits(batch), predictor.logits(batch), atol=ONNX_TOLERANCE, rtol=0)
    for img in images:
        (c1, _, p1), (c2, _, p2) = predictor.predict(img, k=1)[0], onnx_predictor.predict(img, k=1)[0]
        assert c1 == c2 and abs(p1 - p2) < 1e-4
    with pytest.raises(InputError, match=r"ends in .onnx: use .*m2.onnx"):
        export_onnx(predictor, tmp_path / "m2.bin", images)
    assert not (tmp_path / "m2.bin").exists()
    (tmp_path / "M.ONNX").write_bytes((tmp_path / "m.onnx").read_bytes())
    assert load(tmp_path / "M.ONNX").model is None, "the suffix in any case"


def test_onnx_from_the_command_line(mnist_run, mnist_tiny, tmp_path):
    pytest.importorskip("onnxruntime")
    img = str(sorted((mnist_tiny / "valid" / "7").glob("*.png"))[0])
    p = subprocess.run([sys.executable, "-m", "resnets", "export", str(mnist_run.folder), "--out",
                        str(tmp_path / "m.resnets"), "--onnx", str(tmp_path / "m.onnx"), "--check", img],
                       capture_output=True, text=True)
    assert p.returncode == 0 and f"ONNX opset {ONNX_OPSET}" in p.stdout, p.stderr
    outs = [subprocess.run([sys.executable, "-m", "resnets", "predict", str(tmp_path / f), img, "-k", "2"],
                           capture_output=True, text=True).stdout for f in ("m.resnets", "m.onnx")]
    assert outs[0] == outs[1] and outs[0].count("%") == 2, outs
    import onnx

    plain = onnx.load(str(tmp_path / "m.onnx"))
    del plain.metadata_props[:]
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    _refused(["predict", str(tmp_path / "plain.onnx"), img], "not written by `resnets export --onnx`")


def test_imagenette_predictions_have_human_readable_names(imagenette, tmp_path):
    r = run("cnn", data=imagenette, out=tmp_path / "r", progress=False, num_workers=0, **{**TINY, "classes": 10})
    p = subprocess.run([sys.executable, "-m", "resnets", "export", r.folder], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    img = next((imagenette / "val" / "n03888257").glob("*.JPEG"))
    p = subprocess.run([sys.executable, "-m", "resnets", "predict", f"{r.folder}/model.resnets", str(img)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == str(img) and len(lines) == 6
    assert all(line.split("%", 1)[1].strip() in IMAGENETTE_NAMES.values() for line in lines[1:]), lines
    assert load(f"{r.folder}/model.resnets").predict(img, k=10)[0][1] in IMAGENETTE_NAMES.values()


def test_clear_errors(mnist_run, tmp_path):
    with pytest.raises(MissingFile, match="no model file"):
        load(tmp_path / "nothing.resnets")
    (tmp_path / "bad.resnets").write_bytes(b"\x00garbage")
    with pytest.raises(InputError, match="not a readable resnets model file"):
        load(tmp_path / "bad.resnets")
    torch.save({"weights": 1}, tmp_path / "other.pth")
    with pytest.raises(InputError, match="not a resnets model file"):
        load(tmp_path / "other.pth")
    predictor = load(export(mnist_run.folder, tmp_path / "m.resnets"))
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(InputError, match="not an image"):
        predictor.predict(tmp_path / "notes.txt")
    (tmp_path / "empty.jpg").touch()  # (an interrupted copy): said as such, for `resnets predict` as for the app
    with pytest.raises(InputError, match=r"empty\.jpg is empty \(0 bytes\)"):
        predictor.predict(tmp_path / "empty.jpg")
    with pytest.raises(MissingFile, match="no checkpoint"):
        export(tmp_path)
    p = subprocess.run([sys.executable, "-m", "resnets", "predict", str(tmp_path / "bad.resnets"), "x.jpg"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "not a readable resnets model file" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.slow  # starts a subprocess
def test_a_crafted_model_file_is_refused_without_running_its_code(tmp_path):
    marker, path = tmp_path / "pwned", tmp_path / "evil.resnets"
    torch.save({"format": FORMAT, "payload": _Payload(marker)}, path)
    with pytest.raises(InputError, match="holds code and was refused"):
        load(path)
    _refused(["predict", str(path), "x.jpg"], "holds code and was refused")
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is live: loading the file unsafely runs it
    assert marker.exists()


@pytest.mark.slow  # starts a subprocess
def test_a_crafted_checkpoint_is_refused_without_running_its_code(tmp_path):
    marker, folder = tmp_path / "pwned", tmp_path / "run"
    folder.mkdir()
    torch.save({"epoch": 0, "payload": _Payload(marker)}, folder / LEGACY_CHECKPOINT)  # the torch format 0.2 read
    with pytest.raises(InputError, match="holds code and was refused.*remove it"):
        load_checkpoint(folder)
    with pytest.raises(InputError, match="holds code and was refused"):
        export(folder)
    with pytest.raises(InputError, match="holds code and was refused"):
        run("cnn", data=tmp_path, out=folder, resume=True, progress=False, num_workers=0, **TINY)  # before any data
    _refused(["export", str(folder)], "holds code and was refused")
    assert not marker.exists()
    torch.load(folder / LEGACY_CHECKPOINT, weights_only=False)  # the payload is live: loading the file unsafely runs it
    assert marker.exists()


def test_a_model_file_rebuilds_its_stem(mnist_run, tmp_path):
    "A ResNet with a one-conv stem, saved as `export` writes it, loads with that stem (its weights fit no other)."
    from resnets.models import create_model

    meta = dict(load(export(mnist_run.folder, tmp_path / "m.resnets")).meta)
    assert meta["stem"] == [], "a run without a stem setting records the default"
    net = create_model("resnet18", n_out=2, width=0.25, stem=(64,))
    torch.save({**meta, "model": "resnet18", "width": 0.25, "stem": [64], "state_dict": net.state_dict()},
               tmp_path / "r.resnets")
    loaded = load(tmp_path / "r.resnets").model
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded.eval()(x), net.eval()(x))
    with pytest.raises(RuntimeError, match="size mismatch"):  # the chapter's stem: the file's weights do not fit
        create_model("resnet18", n_out=2, width=0.25).load_state_dict(net.state_dict())


def test_a_run_exports_to_one_file_that_predicts_as_the_model_does(generated_run, tmp_path):
    "The quick tier's export check, on generated images: the file, its names, TorchScript equal to eager."
    path = export(generated_run.folder, tmp_path / "m.resnets")
    p = load(path)
    img = next(Path(generated_run.settings["data"]).glob("val/cat/*.jpg"))
    top = p.predict(img, k=2)
    assert sorted(folder for folder, _, _ in top) == ["cat", "dog"]
    assert sum(prob for _, _, prob in top) == pytest.approx(1.0, abs=1e-5)
    assert export_torchscript(p, tmp_path / "m.pt", images=[img]) < 1e-5


def test_predict_a_folder_into_a_csv(generated_run, tmp_path, capsys):
    from resnets.cli import main

    model = export(generated_run.folder, tmp_path / "m.resnets")
    folder = Path(generated_run.settings["data"]) / "val"
    main(["predict", str(model), str(folder), "-k", "2", "--csv", str(tmp_path / "p.csv")])
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0] == "image,class_1,probability_1,class_2,probability_2" and len(rows) == 1 + 8
    first = rows[1].split(",")
    assert first[1] in ("cat", "dog") and 0.5 <= float(first[2]) <= 1
    assert "saved 8 predictions" in capsys.readouterr().out


def test_a_model_file_is_safetensors_and_earlier_torch_files_still_load(generated_run, tmp_path):
    "No pickle in the library's model files: safetensors with the description in its header; v1 torch files load."
    from safetensors import safe_open

    path = export(generated_run.folder, tmp_path / "m.resnets")
    assert path.read_bytes()[:2] != b"PK"  # not a torch (zip) file
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["resnets"])
        assert meta["format"] == FORMAT and meta["vocab"] == ["cat", "dog"] and len(list(f.keys())) > 10
    new = load(path)
    old_file = tmp_path / "old.resnets"  # what resnets 0.2's export wrote: one torch.save'd dict
    torch.save({**new.meta, "state_dict": new.model.state_dict()}, old_file)
    old = load(old_file)
    img = next(Path(generated_run.settings["data"]).glob("val/dog/*.jpg"))
    assert old.predict(img, k=2) == new.predict(img, k=2)
    (tmp_path / "bad.resnets").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(InputError, match="not a readable resnets model file"):
        load(tmp_path / "bad.resnets")


# -- a model file's description is checked against its weights (faults a trial found) -------------------------------


def _edited(generated_run, tmp_path, **changes) -> Path:
    "The run's model file with its description edited (`changes`; None removes a key), written as export writes it."
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = export(generated_run.folder, tmp_path / "m.resnets")
    with safe_open(str(path), "pt") as f:
        meta, tensors = json.loads(f.metadata()["resnets"]), {k: f.get_tensor(k) for k in f.keys()}
    meta.update(changes)
    out = tmp_path / "edited.resnets"
    save_file(tensors, str(out), metadata={"resnets": json.dumps(meta)})
    return out


@pytest.mark.parametrize("changes, message", [
    ({"vocab": ["dog", "cat"]}, "not unique and sorted"),  # reordered: every prediction would carry the other label
    ({"vocab": ["cat", "dog", "emu"]}, "names 3 classes for a network with 2 outputs"),
    ({"vocab": ["cat"]}, "names 1 classes for a network with 2 outputs"),
    ({"vocab": ["cat", "dog", "emu"], "n_out": 3}, "not those of the cnn with 3 outputs"),
    ({"model": "resnet18"}, "not those of the resnet18"),
    ({"model": "vgg16"}, "unknown architecture 'vgg16'"),
    ({"resize": 0}, "resize must be a whole number of pixels from 1"),
    ({"presize": 10**6, "resize": 10**6}, "presize must be a whole number of pixels from 1 to 4096"),
    ({"presize": "big"}, "presize must be a whole number"),
    ({"resize": 64, "presize": 40}, "larger than its presize"),
    ({"stats": [[0.5, 0.5], [1, 1, 1]]}, "stats must be"),
    ({"crop": 0}, "crop must be a fraction"),
    ({"vocab": None}, "no list of class names"),
])
def test_a_model_file_whose_description_does_not_fit_is_refused_in_one_line(generated_run, tmp_path, changes,
                                                                                 message, capsys):
    from resnets.cli import main

    path = _edited(generated_run, tmp_path, **changes)
    with pytest.raises(InputError, match=message):
        load(path)
    img = next(Path(generated_run.settings["data"]).glob("val/cat/*.jpg"))
    assert main(["predict", str(path), str(img)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.split(" ")[0] in err[0] and "Traceback" not in err[0]


def test_a_described_network_is_checked_against_the_weights_before_it_is_built(generated_run, tmp_path, monkeypatch):
    """A crafted width or class count built the network first (gigabytes, once ~184 GB): now its shapes are taken
    on torch's meta device (no memory) and compared with the weights; only a network that fits is built."""
    import resnets.deploy as deploy

    built, real = [], deploy.create_model

    def spy(*a, **k):
        built.append(torch.empty(0).device.type)  # the device new tensors go to: "meta" allocates nothing
        return real(*a, **k)

    monkeypatch.setattr(deploy, "create_model", spy)
    vocab = [f"c{i:05d}" for i in range(20000)]
    for changes in ({"model": "resnet50", "width": 64.0}, {"vocab": vocab, "n_out": len(vocab)}):
        built.clear()
        with pytest.raises(InputError, match="its weights are not those of the"):
            load(_edited(generated_run, tmp_path, **changes))
        assert built == ["meta"], changes
    built.clear()
    load(_edited(generated_run, tmp_path))
    assert built == ["meta", "cpu"]


def test_an_unedited_model_file_still_loads_and_names_are_filled_in(generated_run, tmp_path):
    path = _edited(generated_run, tmp_path, names=None)
    assert load(path).names == {"cat": "cat", "dog": "dog"}


def test_predict_on_an_image_over_the_pixel_limit_is_one_line(generated_run, tmp_path, monkeypatch, capsys):
    from PIL import Image

    from resnets.cli import main

    big = tmp_path / "big.jpg"
    Image.new("RGB", (200, 100)).save(big)
    monkeypatch.setenv("RESNETS_MAX_IMAGE_PIXELS", "1000")
    assert main(["predict", str(export(generated_run.folder, tmp_path / "m.resnets")), str(big)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "decompression-bomb limit" in err[0] and "RESNETS_MAX_IMAGE_PIXELS=0" in err[0]


class _Call:
    "Pickles as a call of `fn(*args)`: what a crafted file asks the unpickler to do."

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _payloads(marker):
    import builtins
    import importlib
    import os
    import subprocess as sp

    touch = f"open({str(marker)!r}, 'w').close()"
    return {"exec": _Call(builtins.exec, touch), "eval": _Call(builtins.eval, touch),
            "os.system": _Call(os.system, f"touch {marker}"), "subprocess": _Call(sp.Popen, ["touch", str(marker)]),
            "import_module": _Call(importlib.import_module, "os")}


@pytest.mark.parametrize("kind", ["exec", "eval", "os.system", "subprocess", "import_module"])
def test_every_blocked_global_is_named_as_code_that_was_refused(tmp_path, kind):
    "os.system pickles as posix.system, which torch blocks outright, in other words than exec's; both are code."
    from resnets.pretrained import _read_file

    marker = tmp_path / "pwned"
    payload = _payloads(marker)[kind]
    model, folder, weights = tmp_path / "m.resnets", tmp_path / "run", tmp_path / "w.pth"
    folder.mkdir()
    torch.save({"format": FORMAT, "payload": payload}, model)
    torch.save({"epoch": 0, "payload": payload}, folder / LEGACY_CHECKPOINT)
    torch.save({"state_dict": {"payload": payload}}, weights)
    for attempt in (lambda: load(model), lambda: load_checkpoint(folder), lambda: _read_file(weights)):
        with pytest.raises(InputError) as e:
            attempt()
        text = str(e.value)
        assert "holds code and was refused" in text and "nothing in it was run" in text, text
        assert "weights_only" not in text and "\n" not in text, "none of torch's advice to load it unsafely"
    assert not marker.exists()


def test_exported_files_are_as_readable_as_any_new_file(generated_run, tmp_path):
    "Found in a trial: model files were 0600 (safetensors' save_file), unreadable by anyone else."
    import os

    mask = os.umask(0o022)
    try:
        path = export(generated_run.folder, tmp_path / "m.resnets")
        assert path.stat().st_mode & 0o777 == 0o644
        export_torchscript(load(path), tmp_path / "m.pt")
        assert (tmp_path / "m.pt").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(mask)
    assert load(path).predict(next(Path(generated_run.settings["data"]).glob("val/cat/*.jpg")))


def test_an_export_on_a_full_disk_is_one_line_and_leaves_no_half_file(generated_run, tmp_path, monkeypatch):
    "Found in a trial: ONNX and TorchScript exports left truncated files on a full disk, with raw errors."
    import errno
    import os

    from resnets import deploy, files
    from resnets.files import DiskError

    predictor = load(export(generated_run.folder, tmp_path / "m.resnets"))
    real = os.fdopen

    class Full:  # a file on a disk that fills after its first 64 bytes
        def __init__(self, fd, mode):
            self.f = real(fd, mode)

        def write(self, data):
            self.f.write(data[:64])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(files.os, "fdopen", Full)
    with pytest.raises(DiskError, match="no space left on the disk"):
        deploy.export_torchscript(predictor, tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()
    pytest.importorskip("onnx")
    with pytest.raises(DiskError, match="no space left on the disk"):
        export_onnx(predictor, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    assert not [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")], "no temporary left behind"
