"""Export a trained run to one file, load it back, and predict classes of images.

  export(run_dir)         -> run_dir/model.resnets: weights, architecture, class names and preprocessing
  load(path).predict(img) -> top-5 (class, human name, probability) for an image path, PIL image or array
  export_torchscript(...) -> a TorchScript file of the same network, checked against it on real images
  export_onnx(...)        -> an ONNX file of the network (opset ONNX_OPSET), its class names and preprocessing
                             in the file's metadata; `load("m.onnx")` predicts with onnxruntime

Preprocessing is the validation pipeline of training: the image resized (shortest side) and centre
cropped to presize (with pretrained weights: bicubic, and the centre crop they were evaluated with), resized to the
training size, scaled to [0, 1] and normalised with the run's statistics (ImageNet's, or the weights').
"""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch
from fastai.vision.all import imagenet_stats
from PIL import Image, UnidentifiedImageError
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from .checkpoint import CHECKPOINT, load_checkpoint
from .decode import RESAMPLES
from .errors import InputError, MissingFile, check_number, load_weights_only, printable
from .fastdata import preprocess
from .files import atomic_write
from .images import collect_images, open_rgb, to_rgb
from .labels import IMAGENETTE_NAMES
from .models import MODELS, create_model, weights_mismatch
from .pretrained import valid_crop

__all__ = ["FORMAT", "ONNX_OPSET", "export", "load", "check_description", "Predictor", "export_torchscript",
           "export_onnx", "predict_files",
           "write_predictions"]

FORMAT = "resnets-model-v1"  # the description's version: the same in v1 files (torch's format) and safetensors ones
ONNX_OPSET = 18  # onnxruntime 1.16 (2023) and later run it
# what an ONNX file carries of the model file, as JSON in its metadata
_ONNX_META = ("format", "model", "width", "stem", "n_out", "vocab", "names", "presize", "resize", "stats", "resample",
              "crop", "experiment", "epochs_trained", "tta")


def _stats(s: dict) -> list:
    "The mean and std a run normalised with: its pretrained weights' (resnets.pretrained), else ImageNet's."
    p = s.get("preprocessing")
    return [list(p["mean"]), list(p["std"])] if p else [list(v) for v in imagenet_stats]


def _crop(s: dict) -> float:
    "The side of the centre crop validation kept of the presize square (1: all of it), as the run's data had it."
    p = s.get("preprocessing")
    return valid_crop(s.get("test_size") or s["size"], s["presize"]) if p and p.get("crop_pct", 1) != 1 else 1.0


def trained_state(run_dir: str | os.PathLike) -> dict:
    "A run folder's last checkpoint, checked to hold a trained model with its class names (export's, hub's)."
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MissingFile(f"no run folder at {run_dir}: pass the --out folder of a `resnets run`")
    state = load_checkpoint(run_dir)
    if state is None:
        raise MissingFile(f"{run_dir} has no {CHECKPOINT}, so no trained model: train it with `resnets run --out`")
    if not state.get("vocab"):
        raise InputError(f"{run_dir}'s checkpoint has no class names: retrain it with this version of resnets")
    return state


def export(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    "Write the trained model of a run folder (from its last checkpoint) as one file; returns its path."
    run_dir = Path(run_dir)
    state = trained_state(run_dir)
    s, vocab = state["settings"], list(state["vocab"])
    out = Path(out) if out is not None else run_dir / "model.resnets"
    size = s["size"] if "size" in s else s["resize"]  # the option was `resize` in runs of earlier versions
    meta = {"format": FORMAT, "model": s["model"], "width": s.get("width", 1.0), "stem": list(s.get("stem") or ()),
            "n_out": len(vocab), "vocab": vocab, "names": {c: IMAGENETTE_NAMES.get(c, c) for c in vocab},
            "presize": s["presize"], "resize": size, "stats": _stats(s),
            "resample": s.get("preprocessing", {}).get("interpolation", "bilinear"), "crop": _crop(s),
            "experiment": s.get("name"), "epochs_trained": state["epoch"] + 1, "tta": bool(s.get("tta")),
            "history": state["history"]}
    # safetensors: the tensors, and the description as JSON in its header; no pickle to load (see `load`)
    tensors = {k: v.contiguous() for k, v in state["model"].items()}  # (written whole or not at all, as a new file's
    atomic_write(out, safetensors_bytes(tensors, metadata={"resnets": json.dumps(meta)}))  # permissions: not 0600)
    return out


def _read_model_file(path: Path) -> dict:
    """The description and the weights (`state_dict`) of a model file: safetensors (this version), or the torch
    file of earlier versions, read with weights_only (tensors and plain values: a crafted file runs no code)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:2] != b"PK":  # torch's files are zip archives; a safetensors file starts with its header's length
        try:
            with safe_open(str(path), "pt") as f:
                meta = json.loads((f.metadata() or {})["resnets"])
                return {**meta, "state_dict": {k: f.get_tensor(k) for k in f.keys()}}
        except Exception as e:
            raise InputError(f"{path} is not a readable resnets model file ({type(e).__name__}: {e}): write one "
                             "with `resnets export RUN_DIR`") from e
    return load_weights_only(path, "Load only model files written by `resnets export`",
                             "{path} is not a readable resnets model file ({why})")


def _read_image(img) -> Image.Image:
    if isinstance(img, Image.Image):
        return to_rgb(img)
    if isinstance(img, np.ndarray):
        return to_rgb(Image.fromarray(img))
    path = Path(img)
    if not path.is_file():
        raise MissingFile(f"no image at {path}")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes)")
    try:
        return open_rgb(path)  # an image over PIL's pixel limit: ImageTooLarge, saying how to allow it
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"{path} is not an image that can be read ({e})") from e


class Predictor:
    """A trained model with its preprocessing and class names: `predict(img)` gives the top-k classes.

    The network runs on batches of at least two images (a lone image beside a copy of itself): a CPU's kernels for
    one image differ from those for several in the last bits, so this way an image's probabilities are the same
    whether it is predicted alone (`resnets predict`) or in a batch with others (`resnets app`). Where the run was
    scored with flip TTA, each image's and its mirror image's probabilities are averaged, as the run's score was."""

    def __init__(self, model: torch.nn.Module, meta: dict):
        self.model, self.meta = model.eval(), meta
        self.vocab, self.names = meta["vocab"], meta["names"]

    def preprocess(self, img) -> torch.Tensor:
        "An image (path, PIL image or HxWx3 array) -> a normalised (1, 3, size, size) tensor, as validation saw it."
        m = self.meta  # files of earlier versions: bilinear, no centre crop
        return preprocess(_read_image(img), m["presize"], m["resize"], m["stats"], m.get("resample", "bilinear"),
                          m.get("crop", 1.0))

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        "The network's outputs for a batch of preprocessed images."
        return self.model(x)

    def batch_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        "Class probabilities for a batch of preprocessed images (n, classes), as described above."
        n = len(x)
        if n == 1:
            x = torch.cat([x, x])
        probs = self.logits(x).softmax(1)
        if self.meta.get("tta"):
            probs = (probs + self.logits(x.flip(-1)).softmax(1)) / 2
        return probs[:n]

    def probabilities(self, img) -> torch.Tensor:
        return self.batch_probabilities(self.preprocess(img))[0]

    def top(self, probs: torch.Tensor, k: int = 5) -> list[tuple[str, str, float]]:
        "One image's probabilities -> its k most probable classes: (class, readable name, probability), best first."
        top = probs.topk(min(k, len(probs)))
        return [(self.vocab[i], self.names[self.vocab[i]], float(p)) for p, i in zip(top.values, top.indices)]

    def predict(self, img, k: int = 5) -> list[tuple[str, str, float]]:
        "The k most probable classes: (class folder name, human-readable name, probability), best first."
        check_number("k", k)
        return self.top(self.probabilities(img), k)


class OnnxPredictor(Predictor):
    "A Predictor whose network runs in onnxruntime, from a file written by `export_onnx`."

    def __init__(self, session, meta: dict):
        self.session, self.model, self.meta = session, None, meta
        self.vocab, self.names = meta["vocab"], meta["names"]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"image": x.numpy()})[0])


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise InputError("ONNX models need onnxruntime (and onnx to write them): pip install 'resnets[onnx]'") \
            from None
    return onnxruntime


def is_onnx(path: str | os.PathLike) -> bool:
    "Whether a model file is ONNX, by its name (.onnx in any case), as `load` and `resnets predict` tell."
    return Path(path).suffix.lower() == ".onnx"


def load(path: str | os.PathLike) -> Predictor:
    "Load a file written by `export` (or `resnets export`), or an ONNX file from `export_onnx` (run by onnxruntime)."
    path = Path(path)
    if not path.is_file():
        raise MissingFile(f"no model file at {path}: create one with `resnets export RUN_DIR`")
    if is_onnx(path):
        ort = _onnxruntime()
        try:
            options = ort.SessionOptions()  # no busy-waiting between runs: it took the cores torch's preprocessing
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # needs (predict: 17 -> 13 ms)
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise InputError(f"{path} is not an ONNX model onnxruntime can run ({e})") from e
        props = session.get_modelmeta().custom_metadata_map
        if props.get("format") != json.dumps(FORMAT):
            raise InputError(f"{path} was not written by `resnets export --onnx`: it has no class names or "
                             "preprocessing to predict with")
        try:
            meta = check_description({k: json.loads(v) for k, v in props.items() if k in _ONNX_META}, path)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: its description is not valid JSON ({e}): export it again") from None
        outputs = session.get_outputs()[0].shape[-1]
        if isinstance(outputs, int) and outputs != meta["n_out"]:
            raise InputError(f"{path} is not a usable resnets model file: it names {meta['n_out']} classes for a "
                             f"network with {outputs} outputs; export it again")
        return OnnxPredictor(session, meta)
    meta = _read_model_file(path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"{path} is not a resnets model file (expected format {FORMAT}): use `resnets export`")
    meta = check_description(meta, path)
    build = partial(create_model, meta["model"], n_out=meta["n_out"], width=meta.get("width", 1.0),
                    stem=tuple(meta.get("stem") or ()))
    with torch.device("meta"):  # the described network's shapes, no memory: a crafted width or class count
        shapes = build().state_dict()  # (gigabytes) is refused before anything is allocated
    if problem := weights_mismatch(shapes, meta["state_dict"], dtypes=False):
        raise InputError(f"{path}: its weights are not those of the {meta['model']} with {meta['n_out']} outputs its "
                         f"description names ({problem}): write the file again with `resnets export`")
    model = build()
    model.load_state_dict(meta["state_dict"])
    return Predictor(model, meta)


MAX_IMAGE_SIDE = 4096  # a larger presize or size in a model file is taken for damage, not a choice


def check_description(meta: dict, path) -> dict:
    """A model file's description checked (one InputError line naming what is wrong) before anything is built from
    it: a known architecture, class names unique and in fastai's order (sorted: reordered names would put the wrong
    labels on every prediction) and as many as the outputs, sizes whole numbers within bounds, the normalisation's
    statistics three numbers each. Returns it with names for classes that have none."""
    def bad(what: str) -> InputError:
        return InputError(f"{path} is not a usable resnets model file: {what}; write it again with `resnets export`")

    if meta.get("model") not in MODELS:
        raise bad(f"unknown architecture {meta.get('model')!r} (this version builds {', '.join(MODELS)})")
    vocab, n_out = meta.get("vocab"), meta.get("n_out")
    if not isinstance(vocab, list) or not vocab or not all(isinstance(c, str) for c in vocab):
        raise bad("it has no list of class names")
    if len(set(vocab)) != len(vocab) or vocab != sorted(vocab):
        raise bad("its class names are not unique and sorted as fastai orders them (edited or reordered names would "
                  "label predictions wrongly)")
    if isinstance(n_out, bool) or not isinstance(n_out, int) or n_out != len(vocab):
        raise bad(f"it names {len(vocab)} classes for a network with {n_out!r} outputs")
    sizes = {k: meta.get(k) for k in ("presize", "resize")}
    for k, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_IMAGE_SIDE:
            raise bad(f"its {k} must be a whole number of pixels from 1 to {MAX_IMAGE_SIDE}, not {v!r}")
    if sizes["resize"] > sizes["presize"]:
        raise bad(f"its resize ({sizes['resize']}) is larger than its presize ({sizes['presize']})")
    stats = meta.get("stats", [list(v) for v in imagenet_stats])
    if (not isinstance(stats, list | tuple) or len(stats) != 2 or any(not isinstance(v, list | tuple) or len(v) != 3
            for v in stats) or not all(isinstance(x, int | float) and not isinstance(x, bool) for v in stats for x in v)
            or not all(x > 0 for x in stats[1])):
        raise bad(f"its stats must be a mean and a positive std of three numbers each, not {stats!r}")
    crop = meta.get("crop", 1.0)
    if isinstance(crop, bool) or not isinstance(crop, int | float) or not 0 < crop <= 1:
        raise bad(f"its crop must be a fraction in (0, 1], not {crop!r}")
    if meta.get("resample", "bilinear") not in RESAMPLES:
        raise bad(f"its resample must be one of {', '.join(RESAMPLES)}, not {meta.get('resample')!r}")
    names = meta.get("names") if isinstance(meta.get("names"), dict) else {}
    return {**meta, "stats": stats, "names": {c: str(names.get(c, IMAGENETTE_NAMES.get(c, c))) for c in vocab}}


def export_onnx(predictor: Predictor, out: str | os.PathLike, images=()) -> float:
    """Write the network (normalised images in, logits out, any batch size) as ONNX opset `ONNX_OPSET`, with the
    class names and preprocessing in its metadata; returns the largest difference of onnxruntime's logits from the
    eager model's on `images`."""
    try:
        import onnx
    except ImportError:
        raise InputError("writing ONNX needs the onnx package: pip install 'resnets[onnx]'") from None
    size, out = predictor.meta["resize"], Path(out)
    if not is_onnx(out):
        raise InputError(f"an ONNX file's name ends in .onnx: use {out.with_suffix('.onnx')}, not {out}")
    model = predictor.model.to(memory_format=torch.contiguous_format)
    buf = io.BytesIO()  # exported in memory, then written whole (atomic_write): a full disk leaves no half file
    with warnings.catch_warnings():  # the exporter's notes on its own internals are not the user's business
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, size, size),), buf, input_names=["image"],
                          output_names=["logits"], opset_version=ONNX_OPSET, dynamo=False,
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    proto = onnx.load_from_string(buf.getvalue())
    for k in _ONNX_META:
        if k in predictor.meta:
            proto.metadata_props.add(key=k, value=json.dumps(predictor.meta[k]))
    proto.metadata_props.add(key="preprocessing", value=(
        f"RGB, turned upright as its EXIF orientation says; shortest side resized to {predictor.meta['presize']} "
        f"({predictor.meta.get('resample', 'bilinear')}) and centre-cropped square; centre "
        f"{predictor.meta.get('crop', 1.0):.4f} of each side kept; resized to {size} "
        f"(bilinear); scaled to [0, 1]; normalised per channel with mean {predictor.meta['stats'][0]} and std "
        f"{predictor.meta['stats'][1]}; NCHW float32"))
    atomic_write(out, proto.SerializeToString())
    loaded, diffs = load(out), [0.0]
    with torch.no_grad():
        for img in images:
            x = predictor.preprocess(img)
            diffs.append((loaded.logits(x) - predictor.model(x)).abs().max().item())
    return max(diffs)


def export_torchscript(predictor: Predictor, out: str | os.PathLike, images=()) -> float:
    """Trace the network (normalised images in, logits out) to TorchScript; returns the largest difference
    from the eager model on `images` (real ones, preprocessed as for prediction)."""
    size = predictor.meta["resize"]
    with warnings.catch_warnings():  # torch 2.14 marks TorchScript deprecated; the trace is still what it was
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(predictor.model, torch.randn(1, 3, size, size))
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
        atomic_write(out, buf.getvalue())  # whole or not at all (a full disk: one line, no half file)
        loaded = torch.jit.load(str(out))
    diffs = [0.0]
    with torch.no_grad():
        for img in images:
            x = predictor.preprocess(img)
            diffs.append((loaded(x) - predictor.model(x)).abs().max().item())
    return max(diffs)


def predict_files(model, paths: list[str], k: int = 5, csv: str | None = None, threads: int | None = None) -> None:
    """`resnets predict`: each image's top-k classes printed (the first 20 when they also go to `csv`), on `threads`
    threads (the same number as `resnets app --threads` gives its answers to the last bit)."""
    if threads is not None:
        check_number("threads", threads)
        torch.set_num_threads(threads)
    predictor, rows = load(model), []
    for img in collect_images(paths):
        top = predictor.predict(img, k=k)
        rows.append([str(img), *(v for _, name, prob in top for v in (name, f"{prob:.6f}"))])
        if csv is None or len(rows) <= 20:  # a folder into a CSV: the first few on screen
            print(printable(str(img)))
            for c, name, prob in top:
                name, c = printable(name), printable(c)
                print(f"  {prob:7.2%}  {name} ({c})" if name != c else f"  {prob:7.2%}  {c}")
    if csv is not None:
        write_predictions(csv, rows, k)


def write_predictions(path: str, rows: list[list[str]], k: int) -> None:
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:  # a non-UTF-8 file name: its
        w = csv.writer(f)  # bytes as they are, so the path in the CSV opens the file
        w.writerow(["image", *(c for i in range(1, k + 1) for c in (f"class_{i}", f"probability_{i}"))])
        w.writerows(rows)
    print(f"saved {len(rows)} predictions to {path}")
