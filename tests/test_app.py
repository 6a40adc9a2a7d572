"""`resnets app` and `resnets export --space`: the page's predictions are `resnets predict`'s to the last bit, however
requests are batched; bad uploads get a line and the server goes on; the Space folder serves from itself alone; a
real browser reads the page."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import save_image
from resnets.deploy import export, load

pytest.importorskip("gradio", reason="the app needs Gradio: pip install 'resnets[app]'")
from resnets.app import MAX_FILES, Batcher, classify, render  # noqa: E402


@pytest.fixture(scope="module")
def model_file(generated_run, tmp_path_factory) -> Path:
    return export(generated_run.folder, tmp_path_factory.mktemp("app") / "model.resnets")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    sizes = [(48, 40), (36, 52), (40, 40), (64, 30), (50, 50), (45, 60)]
    return [save_image(folder / f"p{i}.jpg", size=s, seed=50 + i) for i, s in enumerate(sizes)]


def test_the_page_predicts_what_resnets_predict_does_however_requests_are_batched(model_file, photos, capsys):
    "Six requests at once, held until all wait, then run as one batch: each photo's classes, bit for bit."
    from resnets.cli import main

    predictor = load(model_file)
    alone = {p: predictor.predict(p) for p in photos}  # what `resnets predict` prints, image by image
    main(["predict", str(model_file), str(photos[0])])
    assert alone[photos[0]][0][1] in capsys.readouterr().out
    gate, real, held_n = threading.Event(), predictor.batch_probabilities, []

    def held(x):  # the first batch waits in the network until every other request is queued
        if not held_n:
            held_n.append(len(x))
            gate.wait(10)
        return real(x)

    predictor.batch_probabilities = held
    batcher, rows = Batcher(predictor), {}

    def request(p):
        rows[p] = classify([p], predictor, batcher)[0]

    threads = [threading.Thread(target=request, args=(p,)) for p in photos]
    for t in threads:
        t.start()
    end = time.time() + 10
    while not (held_n and batcher._jobs.qsize() == len(photos) - held_n[0]) and time.time() < end:
        time.sleep(0.01)
    gate.set()
    for t in threads:
        t.join(10)
    rest = len(photos) - held_n[0]
    assert batcher.batches == [held_n[0]] + ([rest] if rest else []), "the waiting requests ran as one batch"
    for p in photos:
        assert [tuple(t) for t in rows[p]["top"]] == alone[p] and rows[p]["ms"] > 0
    both = classify(photos[:2], predictor)  # one request with two photos, no batcher: the same numbers
    assert [[tuple(t) for t in r["top"]] for r in both] == [alone[photos[0]], alone[photos[1]]]


def test_a_run_scored_with_flip_tta_predicts_with_it(model_file, photos):
    predictor = load(model_file)
    x = torch.cat([predictor.preprocess(p) for p in photos[:3]])
    plain = predictor.batch_probabilities(x)
    predictor.meta["tta"] = True
    with torch.no_grad():
        mirrored = predictor.model(x.flip(-1)).softmax(1)
    assert torch.equal(predictor.batch_probabilities(x), (plain + mirrored) / 2)
    assert torch.equal(predictor.probabilities(photos[1]), predictor.batch_probabilities(x)[1]), "alone as batched"


def test_bad_uploads_get_a_line_and_the_server_goes_on(model_file, photos, tmp_path, monkeypatch):
    predictor = load(model_file)
    batcher = Batcher(predictor)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    empty = tmp_path / "empty.png"
    empty.touch()
    deep = tmp_path / "deep.png"  # 16-bit greyscale: scaled to 8 bits and predicted
    Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 20).astype(np.uint16)).save(deep)
    huge = save_image(tmp_path / "huge.jpg", size=(3000, 2000), seed=3)  # a phone photo's size: predicted
    bomb = save_image(tmp_path / "bomb.png", size=(110, 100), seed=4)
    rows = classify([text, empty, deep, huge, photos[0]], predictor, batcher)
    assert "notes.jpg is not an image" in rows[0]["error"] and "empty.png is empty (0 bytes)" in rows[1]["error"]
    assert str(tmp_path) not in rows[0]["error"], "the server's paths are not shown"
    assert [r.get("top") is not None for r in rows] == [False, False, True, True, True]
    monkeypatch.setenv("RESNETS_MAX_IMAGE_PIXELS", "10000")  # 11,000 pixels: PIL would decode it with a warning
    (row,) = classify([bomb], predictor, batcher)
    assert "bomb.png is 110 x 100 pixels, over the 10,000" in row["error"]
    assert "RESNETS_MAX_IMAGE_PIXELS" in row["error"]
    monkeypatch.delenv("RESNETS_MAX_IMAGE_PIXELS")
    many = classify([photos[i % len(photos)] for i in range(50)], predictor, batcher)
    assert sum("top" in r for r in many) == MAX_FILES and len(many) == 50
    assert f"at most {MAX_FILES} photos" in many[-1]["error"]
    page = render(rows + [{"file": "<script>.jpg", "error": "x <b>"}])
    assert "&lt;script&gt;.jpg" in page and "<script>" not in page and page.count('class="resnets-result"') == 6
    assert [tuple(t) for t in classify([photos[1]], predictor, batcher)[0]["top"]] == predictor.predict(photos[1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, proc=None, seconds: float = 120) -> None:
    import urllib.request

    end = time.time() + seconds
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the server exited ({proc.returncode})")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"nothing answered at {url} in {seconds} s")


@pytest.mark.slow
def test_the_space_folder_serves_from_itself_alone(generated_run, photos, tmp_path):
    "export --space, then `python app.py` in the folder (this checkout not on the path): the same predictions."
    from gradio_client import Client, handle_file

    from resnets.cli import main

    space = tmp_path / "space"
    assert main(["export", str(generated_run.folder), "--space", str(space)]) in (0, None)
    names = {p.name for p in space.iterdir()}
    assert {"app.py", "model.resnets", "requirements.txt", "README.md", "resnets", "results.json"} <= names
    readme = (space / "README.md").read_text()
    assert readme.startswith("---\n") and "sdk: gradio" in readme and "app_file: app.py" in readme
    assert any(line.startswith("torch==") for line in (space / "requirements.txt").read_text().splitlines())
    moved = shutil.move(space, tmp_path / "elsewhere")  # the folder alone, wherever it is
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1", GRADIO_ANALYTICS_ENABLED="False")
    log = open(tmp_path / "space.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=moved, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for(f"http://127.0.0.1:{port}/", proc)
        _, rows = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(
            [handle_file(str(p)) for p in photos[:2]], api_name="/predict"
        )
        predictor = load(Path(moved) / "model.resnets")
        assert [[tuple(t) for t in r["top"]] for r in rows] == [predictor.predict(p) for p in photos[:2]]
    finally:
        proc.kill()
        proc.wait()
        log.close()
    out = (tmp_path / "space.log").read_text()
    assert f"from {Path(moved).resolve() / 'resnets'}" in out, out[-2000:]


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.slow
def test_a_browser_uploads_a_photo_and_reads_the_top_class(model_file, photos, tmp_path):
    """Headless Chromium (Debian's package, driven by Playwright from PyPI; nothing downloads a browser) uploads a
    photo to the page and reads the top-1 class it shows: `resnets predict`'s."""
    playwright = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (pip)")
    browser_path = _chromium()
    if browser_path is None:
        pytest.skip("no Chromium on this machine: apt-get install chromium (CI installs it where it can)")
    from resnets.app import serve

    port = _free_port()
    demo = serve(model_file, port=port, block=False)
    try:
        with playwright.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("input[type=file]").first.set_input_files(str(photos[0]))
            page.get_by_role("button", name="Predict").click()
            result = page.locator("#resnets-results .resnets-result").first
            result.wait_for(timeout=60_000)
            top1 = result.locator(".resnets-label").first.inner_text()
            page.screenshot(path=str(tmp_path / "page.png"))
            browser.close()
    finally:
        demo.close()
    assert top1 == load(model_file).predict(photos[0])[0][1]
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_a_run_with_an_onnx_export_is_served_by_onnxruntime(generated_run, photos, tmp_path):
    pytest.importorskip("onnxruntime", reason="the ONNX path needs onnxruntime: pip install 'resnets[onnx]'")
    from resnets.app import resolve_model
    from resnets.deploy import OnnxPredictor

    run = shutil.copytree(generated_run.folder, tmp_path / "run")
    assert resolve_model(run) == (run / "model.resnets", run), "a run folder: exported, served by torch"
    assert resolve_model(run, onnx=True) == (run / "model.onnx", run), "--onnx writes the ONNX export"
    assert resolve_model(run)[0] == run / "model.onnx", "an ONNX export beside it: served by onnxruntime"
    predictor = load(run / "model.onnx")
    assert isinstance(predictor, OnnxPredictor)
    rows = classify(photos[:3], predictor, Batcher(predictor))
    assert [[tuple(t) for t in r["top"]] for r in rows] == [predictor.predict(p) for p in photos[:3]]
