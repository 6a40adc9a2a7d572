"""A trained run out into the timm / Hugging Face ecosystem.

- `export_timm(run_dir, out)`: the folder timm's own `save_for_hf` writes (model.safetensors, config.json with the
  architecture, the class names, the preprocessing and where the weights came from), so that
  `timm.create_model("local-dir:OUT", pretrained=True)` gives the run's network and logits, and `hf-hub:USER/NAME`
  does after an upload.
- `model_card(run_dir)`: a README.md for that folder: the data, the classes, the settings, the accuracy, the
  versions and the command that trained it.
- `push(run_dir, repo_id)`: both, uploaded with huggingface_hub (`resnets push RUN_DIR USER/NAME`); no network, no
  token or a refusal is one line (`HubError`).

The chapter's ResNets are timm's ResNet-D family (resnets.pretrained), so any run of resnet18 ... resnet152 at
full width (and resnet10 with stem 24,32,64) exports; the chapter's small CNNs have no timm counterpart.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .config import is_weights_path
from .deploy import trained_state
from .errors import InputError
from .files import as_umask_allows, disk_error, temporary
from .labels import IMAGENETTE_NAMES
from .models import create_model
from .pretrained import DEFAULT_TAGS, TIMM_ARCHS, names_default, resnets_to_timm
from .results import load_results

__all__ = ["HubError", "export_timm", "model_card", "push"]

# The fields of an architecture's pretrained_cfg that describe the network and its input. save_for_hf copies the
# whole of it, and the rest (tag, licence, origin, hub id, paper) is about timm's ImageNet weights, not this run's.
ARCH_CFG = ("architecture", "custom_load", "input_size", "min_input_size", "fixed_input_size", "interpolation",
            "crop_pct", "crop_mode", "mean", "std", "num_classes", "pool_size", "first_conv", "classifier")


class HubError(InputError):
    "The Hugging Face Hub could not be reached, or refused the upload: the message says which, and what to do."


def _timm_arch(s: dict) -> str:
    key = (s["model"], tuple(s.get("stem") or ()))
    if key not in TIMM_ARCHS or s.get("width", 1.0) != 1:
        have = ", ".join(f"{m}{' --stem ' + ','.join(map(str, st)) if st else ''}" for m, st in TIMM_ARCHS)
        stem = ",".join(map(str, key[1])) or "32,32,64"
        raise InputError(f"a {s['model']} (width {s.get('width', 1.0)}, stem {stem}) has "
                         f"no timm architecture: timm's ResNet-D family is {have}, at full width")
    return TIMM_ARCHS[key]


def _data_config(s: dict) -> dict:
    "The preprocessing of the run's validation, as timm's data config describes it."
    size = s.get("test_size") or s["size"]
    p = s.get("preprocessing")
    if p:  # pretrained weights': their mean, std, filter and centre crop
        return {"input_size": (3, size, size), "mean": tuple(p["mean"]), "std": tuple(p["std"]),
                "interpolation": p["interpolation"], "crop_pct": p["crop_pct"]}
    # the chapter's: the centre square resized (bilinear, twice: to presize then size), ImageNet's statistics
    return {"input_size": (3, size, size), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
            "interpolation": "bilinear", "crop_pct": 1.0}


def _origin(s: dict) -> str:
    "Where a run's weights started: from scratch, timm's ImageNet weights (a tag), a weights file or an earlier run."
    p, init = s.get("pretrained"), s.get("init")
    if names_default(p):
        p = DEFAULT_TAGS[s["model"]]
    if p and is_weights_path(str(p)):
        return f"fine-tuned from the weights in {p}"
    if p:
        return f"fine-tuned from timm's {p} ImageNet weights (https://huggingface.co/timm/{p})"
    return f"fine-tuned from the run {init}" if init else "trained from scratch"


def export_timm(run_dir: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write a run's trained network as timm's `save_for_hf` does, into `out`; returns `out`. Needs timm (pip
    install 'resnets[timm]')."""
    try:
        import timm
        from timm.models import save_for_hf
    except ImportError as e:
        raise InputError("export --timm needs timm: pip install 'resnets[timm]'") from e
    run_dir, out = Path(run_dir), Path(out)
    state = trained_state(run_dir)
    s, vocab = state["settings"], list(state["vocab"])
    arch = _timm_arch(s)
    ours = create_model(s["model"], n_out=len(vocab), stem=tuple(s.get("stem") or ()))
    cfg = {k: v for k, v in timm.models.get_pretrained_cfg(arch).to_dict().items() if k in ARCH_CFG}
    cfg["description"] = f"{s['model']} {_origin(s)} with resnets, for {len(vocab)} classes"
    net = timm.create_model(arch, pretrained=False, num_classes=len(vocab), pretrained_cfg=cfg)
    net.load_state_dict(resnets_to_timm(state["model"], ours))  # strict both ways
    names = [IMAGENETTE_NAMES.get(c, c) for c in vocab]
    config = {"label_names": names, "label_descriptions": dict(zip(names, vocab))}  # names, and the folders they were
    # written into a temporary folder beside `out`, then moved in file by file: a full disk leaves no half folder
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(out)
    try:
        save_for_hf(net.eval(), str(tmp), model_config=config, safe_serialization=True, data_config=_data_config(s))
        files = [f for f in tmp.iterdir() if f.is_file()]
        as_umask_allows(*files)  # safetensors writes 0600
        out.mkdir(exist_ok=True)
        for f in files:
            os.replace(f, out / f.name)
    except OSError as e:
        err = disk_error(e, out, "free space or choose another folder; nothing was written there")
        if err is None:
            raise
        raise err from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def model_card(run_dir: str | os.PathLike) -> str:
    "A model card (README.md) for a run's exported folder: what trained it, on what, how well, and how to use it."
    r = load_results(run_dir)
    s, h, acc = r.settings, r.history, r.accuracy
    names = list(r.per_class_accuracy)  # the class names, as the run's interpretation recorded them
    cmd = " ".join(s.get("argv") or []) or f"resnets run {r.experiment}"
    keep = {k: v for k, v in s.items() if k not in ("argv", "budget_plan")}
    lines = [
        "---", "library_name: timm", "tags:", "- image-classification", "- timm", "- resnets", "---", "",
        f"# {r.experiment}: {_timm_arch(s)} trained with resnets", "",
        "The chapter's ResNet from *Deep Learning for Coders* (chapter 14), trained with the resnets library on "
        "fastai; the network is timm's ResNet-D layer for layer.", "",
        f"- **Data**: `{s.get('source', s.get('data'))}`: {s.get('n_train')} training and {s.get('n_valid')} "
        f"validation images, {s.get('n_classes')} classes" + (f" ({', '.join(names)})" if names else ""),
        f"- **Accuracy**: {acc:.4f} on the validation images after {len(h)} epochs" if acc is not None else
        "- **Accuracy**: not validated",
        *([f"- **Flip TTA**: {r.tta_accuracy:.4f}"] if r.tta_accuracy else []),
        f"- **Starting weights**: {_origin(s)}",
        f"- **Trained on**: {r.device}, {r.wall_time or 0:.0f} s",
        f"- **Versions**: {', '.join(f'{k} {v}' for k, v in (r.versions or {}).items())}",
        f"- **Command**: `{cmd}`", "",
        "```python", "import timm", "model = timm.create_model('hf-hub:USER/NAME', pretrained=True).eval()", "```", "",
        "## Settings", "", "```json", json.dumps(keep, indent=1, default=str), "```", "",
    ]
    return "\n".join(lines)


def push(run_dir: str | os.PathLike, repo_id: str, private: bool = False, folder: str | os.PathLike | None = None):
    """Export a run for timm (`export_timm`), add its model card, and upload the folder to the Hugging Face Hub
    as `repo_id` (huggingface_hub: a token from `hf auth login` or $HF_TOKEN). Returns the upload's result."""
    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory() as tmp:
        out = export_timm(run_dir, folder or Path(tmp) / "hub")
        card = model_card(run_dir).replace("USER/NAME", repo_id)
        (out / "README.md").write_text(card)
        api = HfApi()
        try:  # what fails from here is the network's, the token's or the Hub's answer, not the run's: one line
            api.create_repo(repo_id, private=private, exist_ok=True)
            return api.upload_folder(repo_id=repo_id, folder_path=str(out), commit_message="resnets push")
        except Exception as e:
            kept = out if folder else None
            raise HubError(_upload_failure(e, run_dir, repo_id, api.endpoint, kept)) from e


def _upload_failure(e: Exception, run_dir, repo_id: str, endpoint: str, kept: Path | None = None) -> str:
    "One line for a failed upload: what the network or the Hub said, and the ways round it."
    why = type(e).__name__ + (f": {str(e).strip().splitlines()[0]}" if str(e).strip() else "")
    later = (f"{kept} holds the folder to upload later" if kept
             else f"`resnets export {run_dir} --timm DIR` writes the folder to upload later")
    status = getattr(getattr(e, "response", None), "status_code", None)
    if status is None:  # no answer came back: no network, a proxy, HF_HUB_OFFLINE
        return (f"could not reach the Hugging Face Hub at {endpoint} ({why}): check the network, or `hf auth login` "
                f"/ $HF_TOKEN; {later}")
    return (f"the Hugging Face Hub refused to upload to {repo_id} ({why}): is it USER/NAME, with a token that may "
            f"write there (`hf auth login` / $HF_TOKEN)? {later}")
