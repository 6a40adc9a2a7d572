"""`resnets app`: a web page for a trained model, where a person drops photos and sees what the network makes of them.

    resnets app RUN_DIR | MODEL_FILE [--port 7860] [--onnx] [--threads N]
    resnets export RUN_DIR --space DIR      (a folder that is a Hugging Face Space: resnets.space)

The page is Gradio's (`pip install 'resnets[app]'`): one or several photos in, each one's top-5 classes with their
probabilities as bars and the milliseconds it took, beside the run's card (network, size, data, accuracy, and the
accuracy curve and confusion matrix the run saved). Every prediction is `resnets predict`'s to the last bit: the same
`resnets.deploy.Predictor` (the same preprocessing, EXIF orientation honoured as in training, flip TTA where the run
was scored with it), and its batches of at least two images make an image's probabilities the same whether it came
alone or with others. Concurrent requests are gathered into one batch (`Batcher`) and the network runs on a bounded
number of threads (half the cores by default), so one request does not take every core. A model with an ONNX export
beside it (or `--onnx`) runs in onnxruntime.

A file that is not an image, empty, too large for PIL's decompression-bomb limit or unreadable gets a line in the page
and the server goes on serving; at most `MAX_FILES` photos are predicted a request (the page says so when more come).
"""

from __future__ import annotations

import html
import json
import os
import queue
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import torch
from PIL import Image

from .config import check_run_folder
from .deploy import Predictor, export, export_onnx, is_onnx, load
from .errors import InputError, MissingFile, check_number, one_line
from .images import PIXEL_LIMIT_ENV, ImageTooLarge, pixel_limit

__all__ = ["MAX_FILES", "Batcher", "classify", "render", "resolve_model", "build_app", "serve"]

MAX_FILES = 16  # photos predicted per request: the rest are named as skipped
MAX_BATCH = 32  # images the network runs on at once, gathered from the requests waiting
CSS = """
.resnets-result { margin: 0 0 1em 0; }
.resnets-file { font-weight: 600; margin-bottom: 0.3em; }
.resnets-row { display: grid; grid-template-columns: 14em 1fr 4.5em; gap: 0.5em; align-items: center; }
.resnets-bar { background: #f97316; height: 0.9em; border-radius: 3px; }
.resnets-error { color: #b91c1c; }
"""


def _gradio():
    try:
        import gradio
    except ImportError:
        raise InputError("the web page needs Gradio: pip install 'resnets[app]'") from None
    return gradio


class Batcher:
    """Runs a Predictor's network for concurrent callers: each call's images wait in a queue, and one thread takes
    everything waiting (up to `max_batch` images) as one batch. `batches` keeps the size of each batch run."""

    def __init__(self, predictor: Predictor, max_batch: int = MAX_BATCH):
        self.predictor, self.max_batch, self.batches = predictor, max_batch, []
        self._jobs: queue.Queue = queue.Queue()
        threading.Thread(target=self._serve, name="resnets-batcher", daemon=True).start()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        "Class probabilities (n, classes) of n preprocessed images, computed in a batch with whatever else waits."
        done: Future = Future()
        self._jobs.put((x, done))
        return done.result()

    def _serve(self) -> None:
        while True:
            jobs = [self._jobs.get()]
            n = len(jobs[0][0])
            while n < self.max_batch:
                try:
                    jobs.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
                n += len(jobs[-1][0])
            try:
                probs = self.predictor.batch_probabilities(torch.cat([x for x, _ in jobs]))
            except Exception as e:  # noqa: BLE001 (every waiting caller gets the error, the thread goes on)
                for _, done in jobs:
                    done.set_exception(e)
                continue
            self.batches.append(n)
            start = 0
            for x, done in jobs:
                done.set_result(probs[start : start + len(x)])
                start += len(x)


def _why(path: Path, e: Exception) -> str:
    if isinstance(e, InputError):
        return one_line(e).replace(str(path), path.name)
    return f"{path.name} could not be read as an image ({type(e).__name__}: {one_line(e)})"


def _check_size(path: Path) -> None:
    """Refuse an image over PIL's decompression-bomb limit before decoding it. PIL itself decodes up to twice the
    limit with a warning: for a page anyone can send photos to, one such upload per request would cost ~0.5 GB."""
    limit = pixel_limit()
    try:
        with Image.open(path) as im:  # the header only
            w, h = im.size
    except Exception:  # noqa: BLE001 (not an image: reading it says so, in the library's words)
        return
    if limit and w * h > limit:
        raise ImageTooLarge(f"{path.name} is {w} x {h} pixels, over the {limit:,} this page decodes (PIL's "
                            f"decompression-bomb limit; ${PIXEL_LIMIT_ENV} on the server sets another)")


def classify(files, predictor: Predictor, batcher=None, k: int = 5) -> list[dict]:
    """Each file's top-k classes, or why it has none: dicts of file, top ([class, name, probability], best first),
    ms (this request's preprocessing and network time per image), error. At most MAX_FILES are predicted."""
    rows, xs, start = [], [], time.perf_counter()
    for i, f in enumerate(files or []):
        path = Path(f if isinstance(f, str | os.PathLike) else getattr(f, "name", f))  # (an upload's temporary file)
        if i >= MAX_FILES:
            rows.append({"file": path.name, "error": f"not predicted: at most {MAX_FILES} photos at a time"})
            continue
        try:
            _check_size(path)
            xs.append(predictor.preprocess(path))
            rows.append({"file": path.name, "index": len(xs) - 1})
        except Exception as e:  # noqa: BLE001 (one bad file is a line in the page, not the end of the request)
            rows.append({"file": path.name, "error": _why(path, e)})
    if xs:
        x = torch.cat(xs)
        probs = batcher(x) if batcher is not None else predictor.batch_probabilities(x)
        ms = 1000 * (time.perf_counter() - start) / len(xs)
        for row in rows:
            if "index" in row:
                row.update(top=[list(t) for t in predictor.top(probs[row.pop("index")], k)], ms=round(ms, 1))
    return rows


def render(rows: list[dict]) -> str:
    "The page's results: per photo its name and time, then a bar per class (or its error), as HTML."
    if not rows:
        return "<p>Drop one or several photos above.</p>"
    out = []
    for r in rows:
        name = html.escape(r["file"])
        if "error" in r:
            out.append(f'<div class="resnets-result"><div class="resnets-file">{name}</div>'
                       f'<div class="resnets-error">{html.escape(r["error"])}</div></div>')
            continue
        bars = "".join(f'<div class="resnets-row"><span class="resnets-label">{html.escape(label)}</span>'
                       f'<div class="resnets-bar" style="width: {100 * p:.1f}%"></div>'
                       f'<span class="resnets-prob">{p:.1%}</span></div>' for _, label, p in r["top"])
        out.append(f'<div class="resnets-result" data-top1="{html.escape(r["top"][0][0])}"><div class="resnets-file">'
                   f'{name} <small>({r["ms"]:.0f} ms an image)</small></div>{bars}</div>')
    return "\n".join(out)


def resolve_model(source: str | os.PathLike, onnx: bool = False) -> tuple[Path, Path | None]:
    """The model file to serve, and the run folder when `source` is one: a run's ONNX export when it has one (or
    `onnx` asks for it: written if missing), else its model file (exported when missing or older than the run's
    checkpoint); a model file as it is."""
    source = Path(source).expanduser()
    if source.is_file():
        return source, None
    check_run_folder(source)
    model = source / "model.resnets"
    ckpt = max((p for p in source.glob("checkpoint.*")), key=lambda p: p.stat().st_mtime)
    if not model.is_file() or model.stat().st_mtime < ckpt.stat().st_mtime:
        export(source, model)
    onnx_file = source / "model.onnx"
    if onnx and (not onnx_file.is_file() or onnx_file.stat().st_mtime < model.stat().st_mtime):
        export_onnx(load(model), onnx_file)
    if onnx_file.is_file() and onnx_file.stat().st_mtime >= model.stat().st_mtime:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            if onnx:
                raise
        else:
            return onnx_file, source
    return model, source


def card(predictor: Predictor, model_file: Path, run_dir: Path) -> str:
    "The run's card in Markdown: what the network is, what it was trained on, and how well it scored."
    m = predictor.meta
    hist = [h for h in m.get("history") or [] if h.get("accuracy") is not None]
    lines = [f"### {m.get('experiment') or model_file.stem}",
             f"- network: {m['model']}" + (f" at width {m['width']:g}" if m.get("width", 1) != 1 else "")
             + f", {len(m['vocab'])} classes, images at {m['resize']} px (resized to {m['presize']} first)",
             f"- trained {m.get('epochs_trained', '?')} epochs"
             + (f"; validation accuracy {hist[-1]['accuracy']:.2%}" if hist else "")
             + ("; predictions average each photo and its mirror image (flip TTA)" if m.get("tta") else ""),
             f"- served from `{model_file.name}` by {'onnxruntime' if is_onnx(model_file) else 'torch'} "
             f"on {torch.get_num_threads()} thread(s)"]
    if (run_dir / "results.json").is_file():
        r = json.loads((run_dir / "results.json").read_text())
        s = r.get("settings", {})
        lines.append(f"- data: {s.get('source') or s.get('data')} ({s.get('n_train', '?')} training and "
                     f"{s.get('n_valid', '?')} validation images); trained on {r.get('device', '?')}"
                     + (f"; with flip TTA {r['tta_accuracy']:.2%}" if r.get("tta_accuracy") else ""))
    return "\n".join(lines)


def build_app(source: str | os.PathLike, onnx: bool = False, threads: int | None = None):
    """The Gradio page (a `gr.Blocks`) for a run folder or model file; its API endpoint `predict` takes a list of
    files and returns the page's HTML and the rows of `classify`."""
    gr = _gradio()
    model_file, run_dir = resolve_model(source, onnx)
    run_dir = run_dir or model_file.parent  # a model file's card and plots: those beside it (a Space's folder)
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // 2))
    predictor = load(model_file)
    batcher = Batcher(predictor)

    def predict(files):
        rows = classify(files, predictor, batcher)
        return render(rows), rows

    with gr.Blocks(title=f"resnets: {predictor.meta.get('experiment') or model_file.stem}") as demo:
        gr.Markdown(f"## What does this ResNet see?\n{card(predictor, model_file, run_dir)}")
        with gr.Row():
            with gr.Column():
                files = gr.File(label="photos", file_count="multiple", file_types=["image"], type="filepath")
                button = gr.Button("Predict", variant="primary")
            with gr.Column():
                shown = gr.HTML(render([]), elem_id="resnets-results")
                rows = gr.JSON(visible=False)
        plots = [p for p in ("results.png", "confusion_matrix.png", "most_confused.png") if (run_dir / p).is_file()]
        if plots:
            with gr.Row():
                for p in plots:
                    gr.Image(str(run_dir / p), label=p.removesuffix(".png").replace("_", " "), interactive=False)
        button.click(predict, files, [shown, rows], api_name="predict")
        files.upload(predict, files, [shown, rows], api_name=False)
    demo.batcher, demo.predictor, demo.model_file = batcher, predictor, model_file
    return demo


def serve(source: str | os.PathLike, port: int = 7860, onnx: bool = False, threads: int | None = None,
          block: bool = True, host: str = "127.0.0.1"):
    "Start the page on http://HOST:PORT; `block=False` returns the running app (for tests and notebooks)."
    if threads is not None:
        check_number("threads", threads)
    if not Path(source).expanduser().exists():
        raise MissingFile(f"no run folder or model file at {source}: pass a `resnets run` --out folder or a file "
                          "from `resnets export`")
    demo = build_app(source, onnx=onnx, threads=threads)
    demo.queue(default_concurrency_limit=8)
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, max_file_size="50mb", css=CSS,
                quiet=not block, show_error=True)
    return demo
