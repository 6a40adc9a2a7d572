"""resnets.pretrained: the chapter's ResNets are timm's ResNet-D family, so timm's ImageNet weights load into them
exactly; a local weights file goes the way a download does; the images are those the weights were trained on;
offline is one clear line. All offline: timm models built with random weights, files written here."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from resnets import InputError, MissingFile, build, configure, create_model, get_data
from resnets import pretrained as pre
from resnets.pretrained import (
    DEFAULT_TAGS,
    KNOWN_TAGS,
    load_pretrained_body,
    read_pretrained,
    resnets_to_timm,
    timm_to_resnets,
)

timm = pytest.importorskip("timm", reason="timm is an optional extra: pip install 'resnets[timm]'")
PREPROCESSING_TOLERANCE = 1e-4  # largest |difference| of normalised pixels accepted against timm's eval transform


def _timm_model(arch: str, seed: int = 0) -> torch.nn.Module:
    "A timm model with random weights and every BatchNorm randomised (zero-gamma cannot hide a wrong mapping)."
    torch.manual_seed(seed)
    t = timm.create_model(arch, pretrained=False)
    for m in t.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.normal_(), m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return t


@pytest.mark.parametrize("name,stem,arch", [
    ("resnet10", (24, 32, 64), "resnet10t"), ("resnet18", (), "resnet18d"), ("resnet50", (), "resnet50d"),
    pytest.param("resnet34", (), "resnet34d", marks=pytest.mark.slow),
    pytest.param("resnet101", (), "resnet101d", marks=pytest.mark.slow),
    pytest.param("resnet152", (), "resnet152d", marks=pytest.mark.slow),
])
def test_timm_weights_give_timm_s_outputs_both_ways(name, stem, arch):
    t = _timm_model(arch)
    ours = create_model(name, n_out=1000, stem=stem)
    ours.load_state_dict(timm_to_resnets(t.state_dict(), ours))  # strict inside, and load_state_dict is strict
    back = timm.create_model(arch, pretrained=False)
    back.load_state_dict(resnets_to_timm(ours.state_dict(), ours))
    for train in (False, True):
        for size in (64, 97):
            x = torch.randn(2, 3, size, size)
            for m in (t, ours, back):
                m.train(train)
            with torch.no_grad():
                a, b, c = t(x), ours(x), back(x)
            assert (a - b).abs().max() <= 1e-6 and (a - c).abs().max() <= 1e-6, (name, train, size)


def test_the_mapping_is_strict():
    t = _timm_model("resnet18d").state_dict()
    ours = create_model("resnet34", n_out=1000)
    with pytest.raises(InputError, match="missing"):  # another depth: tensors missing
        timm_to_resnets(t, ours)
    narrow = create_model("resnet18", n_out=1000, width=0.5)
    with pytest.raises(InputError, match="mis-shaped"):
        timm_to_resnets(t, narrow)
    with pytest.raises(InputError, match="unexpected"):
        timm_to_resnets({**t, "extra.weight": torch.zeros(1)}, create_model("resnet18", n_out=1000))


def test_every_known_tag_is_a_timm_tag_of_the_family():
    from timm.models import get_pretrained_cfg

    assert set(DEFAULT_TAGS.values()) <= set(KNOWN_TAGS)
    for tag, (top1, res) in KNOWN_TAGS.items():
        cfg = get_pretrained_cfg(tag)
        assert cfg is not None and cfg.hf_hub_id == f"timm/{tag}", tag
        assert 60 < top1 < 90 and res in (176, 224, 256)
        assert pre.pretrained_architecture(tag)[0] in DEFAULT_TAGS


@pytest.fixture
def weights_file(tmp_path):
    "A timm resnet18d's weights as a .safetensors file, as the Hub serves them (random, offline)."
    from safetensors.torch import save_file

    t = _timm_model("resnet18d", seed=1)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in t.state_dict().items()}, path)
    return path, t


def test_a_local_file_and_a_download_take_the_same_path(weights_file, monkeypatch):
    path, t = weights_file
    from_file, prep, where = read_pretrained(path, "resnet18")
    assert where == str(path) and prep.mean == (0.485, 0.456, 0.406)  # a bare file: ImageNet's defaults, said so
    monkeypatch.setattr(pre, "_download", lambda tag, cfg: path)  # what the Hub would hand back
    from_tag, tag_prep, where = read_pretrained(True, "resnet18")
    assert where == "resnet18d.ra2_in1k" and tag_prep.interpolation == "bicubic" and tag_prep.crop_pct == 0.875
    assert from_tag.keys() == from_file.keys() and all(torch.equal(from_tag[k], from_file[k]) for k in from_tag)
    model = create_model("resnet18", n_out=3)
    head = {k: v.clone() for k, v in model[-1].state_dict().items()}
    load_pretrained_body(model, from_file, where)
    assert torch.equal(model[0][0].weight, t.conv1[0].weight)
    assert torch.equal(model[7][1].convs[1][1].running_var, t.layer4[1].bn2.running_var)  # stage 4, block 2, bn2
    assert all(torch.equal(model[-1].state_dict()[k], v) for k, v in head.items()), "the new head stays new"


def _hub_folder(folder, t, safe_serialization):
    "`t` as timm's own save_for_hf writes it (pytorch_model.bin by default), with its config.json."
    from timm.models import save_for_hf

    save_for_hf(t, str(folder), safe_serialization=safe_serialization)
    return folder


def test_a_folder_timm_s_save_for_hf_writes_by_default_loads_as_pretrained(tree, tmp_path):
    t = _timm_model("resnet18d", seed=2)
    folder = _hub_folder(tmp_path / "hub", t, safe_serialization=False)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "pytorch_model.bin"]
    state, prep, where = read_pretrained(folder, "resnet18")
    assert where == str(folder) and prep.source == str(folder / "config.json") and prep.crop_pct == 0.875
    assert state.keys() == t.state_dict().keys() and all(torch.equal(state[k], v) for k, v in t.state_dict().items())
    learn, exp = build("resnet18", data=tree, pretrained=str(folder), size=32, bs=4, num_workers=0, verbose=False)
    assert exp.fine_tunes and torch.equal(learn.model[0][0].weight, t.conv1[0].weight)
    assert torch.equal(learn.model[7][1].convs[1][1].running_var, t.layer4[1].bn2.running_var)


def test_a_hub_folder_prefers_safetensors_and_refuses_code_in_a_bin(tmp_path):
    safe, other = _timm_model("resnet18d", seed=3), _timm_model("resnet18d", seed=4)
    folder = _hub_folder(tmp_path / "both", safe, safe_serialization=True)
    torch.save(other.state_dict(), folder / "pytorch_model.bin")  # another network's: must not be the one read
    state, _, _ = read_pretrained(folder, "resnet18")
    assert torch.equal(state["conv1.0.weight"], safe.conv1[0].weight)
    (folder / "model.safetensors").unlink()
    assert torch.equal(read_pretrained(folder, "resnet18")[0]["conv1.0.weight"], other.conv1[0].weight)

    class Payload:  # pickles as a call of `exec`: whatever unpickles it creates the file `pwned`
        def __reduce__(self):
            return exec, (f"open({str(tmp_path / 'pwned')!r}, 'w').close()",)

    torch.save({"conv1.0.weight": Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(InputError, match="holds code and was refused"):
        read_pretrained(folder, "resnet18")
    assert not (tmp_path / "pwned").exists()


def test_a_folder_without_weights_is_one_line_naming_what_it_looked_for(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFile) as e:
        read_pretrained(tmp_path / "empty", "resnet18")
    msg = str(e.value)
    assert "\n" not in msg and "model.safetensors" in msg and "pytorch_model.bin" in msg and "empty" in msg


def test_a_tag_of_another_architecture_names_the_fix():
    with pytest.raises(InputError, match="pass --model resnet50"):
        read_pretrained("resnet50d.ra2_in1k", "resnet18")
    with pytest.raises(InputError, match="--stem 24,32,64"):
        read_pretrained("resnet10t.c3_in1k", "resnet10")
    with pytest.raises(InputError, match="not a timm tag of the chapter's ResNet family"):
        read_pretrained("vit_base_patch16_224.augreg_in21k", "resnet18")
    with pytest.raises(MissingFile, match="no weights file"):
        read_pretrained("nowhere/model.safetensors", "resnet18")
    with pytest.raises(InputError, match="exist for resnet10, resnet18"):
        configure("cnn", pretrained=True, verbose=False)
    with pytest.raises(InputError, match="give one of them"):
        configure("resnet18", pretrained=True, init="runs/x", verbose=False)


def test_offline_is_one_line_naming_the_tag_and_the_way_round(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(MissingFile) as e:
        read_pretrained("resnet34d.ra2_in1k", "resnet34")
    msg = str(e.value)
    assert "\n" not in msg and "resnet34d.ra2_in1k" in msg and "HF_HUB_OFFLINE is set" in msg
    assert "--pretrained path/to/model.safetensors" in msg and "huggingface.co/timm/resnet34d.ra2_in1k" in msg


def test_a_pretrained_run_loads_the_body_and_fine_tunes(weights_file, tree):
    path, t = weights_file
    learn, exp = build("resnet18", data=tree, pretrained=str(path), size=32, bs=4, num_workers=0, verbose=False)
    assert exp.fine_tunes and exp.presize == 36  # int(32 / 0.875): the centre 32 px of images resized to 36
    assert torch.equal(learn.model[0][0].weight, t.conv1[0].weight)
    assert learn.model[-1].out_features == 2


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("size", [128, 224])
def test_validation_sees_what_timm_s_eval_transform_gives(imagenette, fast, size, tmp_path, monkeypatch):
    "For a tag, the validation tensors of real images equal timm's own eval transform at the same size."
    from timm.data import create_transform, resolve_data_config

    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    cfg = pre._timm_cfg("resnet18d.ra2_in1k")
    prep = pre._preprocessing_of(cfg, "resnet18d.ra2_in1k")
    dls = get_data(imagenette, presize=prep.resize_for(size), resize=size, bs=8, classes=2, subset=(4, 8),
                   fast_data=fast, num_workers=0, **prep.data_kw(size))
    xb, _ = dls.valid.one_batch()
    timm_eval = create_transform(**resolve_data_config(pretrained_cfg=cfg, args={"input_size": (3, size, size)}))
    ref = torch.stack([timm_eval(Image.open(f).convert("RGB")) for f in dls.valid_ds.items[: len(xb)]])
    assert (xb.as_subclass(torch.Tensor) - ref).abs().max() <= PREPROCESSING_TOLERANCE


@pytest.mark.parametrize("fast", [False, True])
def test_validation_sees_what_timm_s_eval_transform_gives_on_generated_images(fast, tmp_path, monkeypatch):
    """The quick tier's check of the same (a resize filter or a crop position unlike timm's fails it): square noise
    images larger and smaller than the size timm resizes them to. (Square, and sizes whose crop margin is even: for
    other images timm resizes the long side to a rounded length, and rounds an odd margin's half where fastai's
    crop floors it, a sub-pixel difference that noise magnifies.)"""
    from timm.data import create_transform, resolve_data_config

    from conftest import save_image

    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "d"
    for i, (split, c, side) in enumerate([(s, c, 40) for s in ("train", "val") for c in ("cat", "dog") for _ in (0, 1)]
                                         + [("val", "dog", 52), ("val", "cat", 90)]):
        save_image(root / split / c / f"{c}{i}.jpg", size=(side, side), seed=i)
    cfg = pre._timm_cfg("resnet18d.ra2_in1k")
    prep = pre._preprocessing_of(cfg, "resnet18d.ra2_in1k")
    for size in (32, 48):  # resized to 36 and 54 px, their centres cropped
        dls = get_data(root, presize=prep.resize_for(size), resize=size, bs=2, fast_data=fast, num_workers=0,
                       **prep.data_kw(size))
        xb = torch.cat([x.as_subclass(torch.Tensor) for x, _ in dls.valid])
        timm_eval = create_transform(**resolve_data_config(pretrained_cfg=cfg, args={"input_size": (3, size, size)}))
        ref = torch.stack([timm_eval(Image.open(f).convert("RGB")) for f in dls.valid_ds.items])
        assert xb.shape == ref.shape == (6, 3, size, size)
        assert (xb - ref).abs().max() <= PREPROCESSING_TOLERANCE


def test_a_pretrained_run_records_its_preprocessing_and_exports_it(weights_file, tree, tmp_path, monkeypatch):
    "fastai's fine_tune from the weights (the head alone, then all); the model file predicts with the same images."
    from resnets import export, load, run
    from resnets.deploy import _stats

    path, _ = weights_file
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    r = run("resnet18", data=tree, pretrained=str(path), size=32, bs=4, epochs=1, freeze_epochs=1, fast_data=True,
            out=tmp_path / "r", progress=False, num_workers=0)
    assert len(r.history) == 2 and r.settings["pretrained"] == str(path)
    assert r.settings["preprocessing"]["interpolation"] == "bicubic" and r.settings["presize"] == 36
    p = load(export(r.folder, tmp_path / "m.resnets"))
    assert p.meta["resample"] == "bicubic" and p.meta["crop"] == pytest.approx(32.5 / 36)
    assert p.meta["stats"] == _stats(r.settings)
    img = next((tree / "val" / "cat").glob("*.jpg"))
    xb = r.learn.dls.test_dl([img]).one_batch()[0]  # the validation pipeline, fastai's way
    assert (p.preprocess(img) - xb.as_subclass(torch.Tensor)).abs().max() < 1e-5
    from resnets.hub import export_timm  # the timm folder says where this run started, and claims no timm weights

    cfg = json.loads((export_timm(r.folder, tmp_path / "hub") / "config.json").read_text())["pretrained_cfg"]
    assert not {"tag", "license", "origin_url", "hf_hub_id", "url"} & set(cfg)
    assert f"fine-tuned from the weights in {path}" in cfg["description"]


@pytest.mark.parametrize("field, value, named", [
    ("crop_pct", 0.001, "crop_pct"), ("crop_pct", 0, "crop_pct"), ("crop_pct", "abc", "crop_pct"),
    ("std", [-0.2, 0.2, 0.2], "std"), ("mean", [1e6, 0.4, 0.4], "mean"), ("mean", [0.5, 0.5], "mean"),
    ("interpolation", "lanczos9", "interpolation"),
])
def test_a_hub_folder_s_config_is_checked_field_by_field(tmp_path, field, value, named):
    "Found in a trial: crop_pct 0.001 made a presize of 32,000 px; std -0.2 trained silently at chance."
    t = _timm_model("resnet18d", seed=3)
    folder = _hub_folder(tmp_path / "hub", t, safe_serialization=True)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["pretrained_cfg"][field] = value
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match=f"pretrained_cfg's {named} is") as e:
        read_pretrained(folder, "resnet18")
    assert "\n" not in str(e.value)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="is not JSON"):
        read_pretrained(folder, "resnet18")
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="not timm's config"):
        read_pretrained(folder, "resnet18")
