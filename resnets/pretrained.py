"""ImageNet weights for the chapter's ResNets, from timm.

The chapter's network (the bag-of-tricks ResNet: a stem of three 3x3 convs, an average-pool then 1x1 conv
shortcut) is timm's ResNet-D family layer for layer: `resnet18` ... `resnet152` are timm's `resnet18d` ...
`resnet152d`, and `resnet10` with stem 24,32,64 is `resnet10t`. So timm's published ImageNet weights load into
`resnets.ResNet` exactly, through one mapping of state-dict keys kept here, both directions, strict (every tensor
used, none missing, every shape equal).

- `timm_to_resnets(state, model)` / `resnets_to_timm(state, model)`: the mapping.
- `read_pretrained(spec, model_name, stem)`: the weights and the preprocessing they were trained with, for `spec` a
  timm tag (`"resnet50d.ra2_in1k"`), `True` (the default tag of `model_name`, `DEFAULT_TAGS`), a local
  `.safetensors` / `.pth` / `.bin` file, or a timm hub folder (what timm's `save_for_hf` writes: model.safetensors
  or pytorch_model.bin, and config.json).
- `load_pretrained_body(model, spec, ...)`: those weights into a model, all but the head (a new one for your
  classes): what `--pretrained` does before fastai's `fine_tune`.

A tag is downloaded by huggingface_hub into its cache (once); without network a tag not in the cache is one line
saying what was tried and how to use a downloaded file instead. timm is needed only to look a tag up:
`pip install 'resnets[timm]'`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from .config import is_weights_path
from .decode import RESAMPLES
from .errors import InputError, MissingFile, load_weights_only

__all__ = ["CHAPTER_PREPROCESSING", "DEFAULT_TAGS", "HUB_WEIGHTS", "KNOWN_TAGS", "TIMM_ARCHS", "Preprocessing",
           "timm_to_resnets", "resnets_to_timm",
           "read_pretrained", "load_pretrained_body", "pretrained_architecture", "names_default"]

# resnets model (and stem) -> timm architecture
TIMM_ARCHS = {("resnet10", (24, 32, 64)): "resnet10t", ("resnet18", ()): "resnet18d", ("resnet34", ()): "resnet34d",
              ("resnet50", ()): "resnet50d", ("resnet101", ()): "resnet101d",
              ("resnet152", ()): "resnet152d"}
DEFAULT_TAGS = {"resnet10": "resnet10t.c3_in1k", "resnet18": "resnet18d.ra2_in1k", "resnet34": "resnet34d.ra2_in1k",
                "resnet50": "resnet50d.ra2_in1k", "resnet101": "resnet101d.ra2_in1k",
                "resnet152": "resnet152d.ra2_in1k"}
# The weights file of a timm hub folder, as timm's save_for_hf names it (with safe_serialization=True; with its
# default, False): safetensors first, since it cannot hold code (a .bin is read with torch.load(weights_only=True)).
HUB_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
# The tags of the family timm publishes ImageNet-1k weights for: their ImageNet top-1 (%) at their default
# resolution, from timm's results/results-imagenet.csv (huggingface/pytorch-image-models, 2026-08).
KNOWN_TAGS = {
    "resnet10t.c3_in1k": (66.724, 176), "resnet18d.ra2_in1k": (72.296, 224),
    "resnet18d.ra4_e3600_r224_in1k": (74.356, 224), "resnet34d.ra2_in1k": (77.108, 224),
    "resnet50d.gluon_in1k": (79.080, 224), "resnet50d.a3_in1k": (78.742, 224), "resnet50d.a2_in1k": (80.268, 224),
    "resnet50d.a1_in1k": (80.730, 224), "resnet50d.ra2_in1k": (80.546, 224),
    "resnet50d.ra4_e3600_r224_in1k": (80.956, 224), "resnet101d.gluon_in1k": (80.466, 224),
    "resnet101d.ra2_in1k": (82.254, 256), "resnet152d.gluon_in1k": (80.476, 224),
    "resnet152d.ra2_in1k": (83.160, 256),
}


@dataclass(frozen=True)
class Preprocessing:
    "What the images a pretrained model saw looked like: normalisation, resampling and the centre crop's fraction."

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    source: str = "ImageNet's defaults"

    def resize_for(self, size: int) -> int:
        "The shorter side validation images are resized to before the centre crop of `size` (timm's rule)."
        return int(size / self.crop_pct)

    def data_kw(self, size: int) -> dict:
        "`get_data`'s keywords for these images, for a run tested at `size`."
        return {"stats": (list(self.mean), list(self.std)), "resample": self.interpolation,
                "valid_crop": valid_crop(size, self.resize_for(size))}

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "interpolation": self.interpolation,
                "crop_pct": self.crop_pct, "source": self.source}


# The chapter's own images: ImageNet's statistics, fastai's bilinear Resize, validation the whole presize square.
CHAPTER_PREPROCESSING = Preprocessing(interpolation="bilinear", crop_pct=1.0, source="the chapter's")


def valid_crop(size: int, presize: int) -> float:
    "The side fraction of a presize square whose centre crop is `size` px as fastai cuts it (it truncates: +0.5)."
    return min(1.0, (size + 0.5) / presize)


def pretrained_architecture(tag: str) -> tuple[str, tuple[int, ...]]:
    "The resnets model (and stem) a timm tag of the family builds, e.g. 'resnet50d.ra2_in1k' -> ('resnet50', ())."
    arch = tag.split(".")[0]
    for key, timm_arch in TIMM_ARCHS.items():
        if timm_arch == arch:
            return key
    archs = ", ".join(sorted(set(TIMM_ARCHS.values())))
    raise InputError(f"{tag!r} is not a timm tag of the chapter's ResNet family ({archs}): pass one of "
                     f"{', '.join(KNOWN_TAGS)}, or a weights file")


# -- the mapping ----------------------------------------------------------------------------------------------------


def _stem_length(model: nn.Module) -> int:
    "How many convs the stem has: the ConvLayers before the max-pool."
    n = next((i for i, m in enumerate(model) if isinstance(m, nn.MaxPool2d)), None)
    if n is None or not isinstance(model[-1], nn.Linear):
        raise InputError("only the library's ResNets (a stem with its max-pool, stages, a linear head) have timm "
                         "weights")
    return n


def _timm_key(key: str, n_stem: int, head: int) -> str:
    "The timm name of one of our state-dict keys (see the module's text)."
    first, _, rest = key.partition(".")
    i = int(first)
    if i == head:
        return f"fc.{rest}"
    if i < n_stem:  # the stem's ConvLayer i: conv then BatchNorm; timm's conv1 Sequential holds all but the last BN
        part, _, leaf = rest.partition(".")
        if part == "0":
            return f"conv1.{3 * i}.{leaf}"
        return f"bn1.{leaf}" if i == n_stem - 1 else f"conv1.{3 * i + 1}.{leaf}"
    stage = i - n_stem  # stage 1 follows the max-pool
    m = re.fullmatch(r"(\d+)\.convs\.(\d+)\.([01])\.(.+)", rest)
    if m:
        block, k, kind, leaf = m.groups()
        return f"layer{stage}.{block}.{'conv' if kind == '0' else 'bn'}{int(k) + 1}.{leaf}"
    m = re.fullmatch(r"(\d+)\.idconv\.([01])\.(.+)", rest)
    if m:
        block, kind, leaf = m.groups()
        return f"layer{stage}.{block}.downsample.{int(kind) + 1}.{leaf}"
    raise InputError(f"no timm name for {key!r}: this model is not one of the chapter's ResNets")


def _key_map(model: nn.Module) -> dict[str, str]:
    "Our key -> timm's key, for every tensor of `model`."
    n_stem, head = _stem_length(model), len(model) - 1
    return {k: _timm_key(k, n_stem, head) for k in model.state_dict()}


def _strict(state: dict, expected: dict, what: str) -> None:
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    shapes = [k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or extra or shapes:
        raise InputError(f"{what} does not fit this network: missing {missing[:3]}, unexpected {extra[:3]}, "
                         f"mis-shaped {sorted(shapes)[:3]} (is it another depth, width or stem?)")


def timm_to_resnets(state: dict, model: nn.Module, what: str = "the weights") -> dict:
    "A timm ResNet-D state dict as `model`'s (`resnets.ResNet`), every tensor used and every shape checked."
    ours = model.state_dict()
    to_ours = {t: k for k, t in _key_map(model).items()}
    _strict(state, {t: ours[k] for t, k in to_ours.items()}, what)
    return {to_ours[t]: v for t, v in state.items()}


def resnets_to_timm(state: dict, model: nn.Module) -> dict:
    "`model`'s state dict under timm's names (what timm's resnet*d loads), every tensor mapped."
    names = _key_map(model)
    _strict(state, model.state_dict(), "the state dict")
    return {names[k]: v for k, v in state.items()}


# -- reading weights ------------------------------------------------------------------------------------------------


def _read_file(path: Path) -> dict:
    "A state dict from a .safetensors file (no pickle) or a weights-only torch file."
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    state = load_weights_only(path, "Pass a .safetensors file or a timm tag",
                              "{path} is not a readable weights file ({why}): pass a .safetensors file or a timm tag")
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _preprocessing_of(cfg: dict, source: str) -> Preprocessing:
    """The preprocessing a pretrained_cfg describes, each field checked against what images can be (a crafted or
    broken config.json: one line naming the field, not a presize of 32,000 px or a run at chance)."""
    def bad(field: str, want: str) -> InputError:
        return InputError(f"{source}: pretrained_cfg's {field} is {cfg.get(field)!r}, {want}: fix or remove it "
                          "(ImageNet's defaults are used without one)")

    def triple(field: str, low: float, high: float, default) -> tuple[float, float, float]:
        v = cfg.get(field, default)
        ok = isinstance(v, list | tuple) and len(v) == 3 and all(
            isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and low < x <= high for x in v)
        if not ok:
            raise bad(field, f"not three numbers in ({low:g}, {high:g}], one per channel")
        return tuple(float(x) for x in v)

    mean, std = triple("mean", -1e-9, 1.0, Preprocessing.mean), triple("std", 0.0, 1.0, Preprocessing.std)
    interpolation = cfg.get("interpolation", "bicubic")
    if interpolation not in RESAMPLES:
        raise bad("interpolation", f"not one of {', '.join(RESAMPLES)}")
    crop = cfg.get("crop_pct", 0.875)
    if isinstance(crop, bool) or not isinstance(crop, int | float) or not 0.5 <= crop <= 1.0:
        raise bad("crop_pct", "not a fraction between 0.5 and 1 (the side of the centre crop)")
    return Preprocessing(mean, std, interpolation, float(crop), source)


def _timm_cfg(tag: str) -> dict:
    try:
        from timm.models import get_pretrained_cfg
    except ImportError as e:
        raise InputError(f"looking up the timm tag {tag!r} needs timm: pip install 'resnets[timm]' (or pass a "
                         "downloaded .safetensors file)") from e
    cfg = get_pretrained_cfg(tag)
    if cfg is None or not cfg.hf_hub_id:
        raise InputError(f"timm publishes no weights under {tag!r}: pass one of {', '.join(KNOWN_TAGS)}")
    return cfg.to_dict()


def _download(tag: str, cfg: dict) -> Path:
    "The tag's model.safetensors, from huggingface_hub's cache or downloaded into it; one clear line if it cannot."
    from huggingface_hub import constants, hf_hub_download

    try:
        return Path(hf_hub_download(cfg["hf_hub_id"], "model.safetensors"))
    except Exception as e:  # offline, no such file, a proxy...: what was tried, and the way round it
        offline = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "HF_HUB_OFFLINE is not set"
        raise MissingFile(f"could not get the weights of {tag} from the Hugging Face Hub ({cfg['hf_hub_id']}; "
                          f"{type(e).__name__}; {offline}; cache {constants.HF_HUB_CACHE}): with network it downloads "
                          f"once; without, download model.safetensors from https://huggingface.co/"
                          f"{cfg['hf_hub_id']} elsewhere and pass --pretrained path/to/model.safetensors") from e


def _hub_weights(folder: Path) -> Path:
    "The weights file of a timm hub folder (`HUB_WEIGHTS`, the first there); one line naming them if neither is."
    found = next((folder / name for name in HUB_WEIGHTS if (folder / name).is_file()), None)
    if found is None:
        raise MissingFile(f"no weights in {folder}: a timm hub folder holds {' or '.join(HUB_WEIGHTS)} (and "
                          "config.json), as timm's save_for_hf writes it; pass such a folder, a weights file or a "
                          "tag")
    return found


def names_default(spec) -> bool:
    "Whether a `pretrained` value asks for the model's default tag (`DEFAULT_TAGS`): True, 'default' or 'imagenet'."
    return spec is True or spec in ("default", "imagenet")


def read_pretrained(spec, model_name: str, stem: tuple[int, ...] = ()) -> tuple[dict, Preprocessing, str]:
    """The timm-named state dict, the preprocessing it was trained with, and a short name of where it came from,
    for `spec`: True (the default tag of `model_name`), a timm tag, a weights file or a timm hub folder."""
    if names_default(spec):
        if model_name not in DEFAULT_TAGS:
            raise InputError(f"no ImageNet weights for {model_name!r}: --pretrained needs one of "
                             f"{', '.join(DEFAULT_TAGS)}")
        spec = DEFAULT_TAGS[model_name]
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_dir() or is_weights_path(spec):  # a file, or a hub folder (its weights file and config.json)
        weights = _hub_weights(path) if path.is_dir() else path
        if not weights.is_file():
            raise MissingFile(f"no weights file at {weights}: pass a .safetensors file, a timm hub folder or a tag "
                              f"({', '.join(KNOWN_TAGS)})")
        config = weights.with_name("config.json")  # what the weights were trained on, when it is beside them
        try:
            cfg = json.loads(config.read_text()) if config.is_file() else {}
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(f"{config} is not JSON ({e}): fix it, or remove it to use ImageNet's defaults") from None
        cfg = cfg.get("pretrained_cfg", {}) if isinstance(cfg, dict) else None
        if not isinstance(cfg, dict):
            raise InputError(f"{config}: not timm's config (a JSON object with a pretrained_cfg object): fix it, or "
                             "remove it to use ImageNet's defaults")
        return _read_file(weights), _preprocessing_of(cfg, str(config) if cfg else "ImageNet's defaults"), str(path)
    arch = pretrained_architecture(spec)
    if arch != (model_name, tuple(stem or ())):
        name, arch_stem = arch
        fix = f"--model {name}" + (f" --stem {','.join(map(str, arch_stem))}" if arch_stem else "")
        raise InputError(f"{spec} holds the weights of a {name}{' with stem ' + str(arch_stem) if arch_stem else ''}"
                         f", but this run builds a {model_name}: pass {fix}")
    cfg = _timm_cfg(spec)
    return _read_file(_download(spec, cfg)), _preprocessing_of(cfg, f"timm's pretrained_cfg of {spec}"), spec


def load_pretrained_body(model: nn.Module, state: dict, where: str = "the weights") -> None:
    """A timm-named state dict (`read_pretrained`) into `model`, every layer but the head (which stays new, for
    this run's classes). Strict: a tensor missing, extra or of another shape is an error naming it."""
    body = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if not any(k.startswith("fc.") for k in state):
        raise InputError(f"{where} has no head (fc.*): is it a timm ResNet-D state dict?")
    own_head = {f"fc.{k}": v for k, v in model[-1].state_dict().items()}  # the new head stays as it was made
    model.load_state_dict(timm_to_resnets({**body, **own_head}, model, where))
