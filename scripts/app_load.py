"""Load on `resnets app`: concurrent clients for a bounded time against the page on 127.0.0.1, every answer checked.

    python scripts/app_load.py OUT.json --model RUN_DIR|MODEL_FILE --images DIR [--clients 8] [--seconds 60]

The server is `resnets app MODEL --port P --threads N` in its own process (its memory sampled from /proc). Each
client (a thread with its own gradio_client) sends one photo a request through the page's API, in turn from DIR's
images, and every fifth request a hostile file instead (text named .jpg, an empty file, a truncated JPEG, a
decompression bomb that declares 13,000 x 13,000 pixels). A good answer must be `resnets predict --threads N`'s
top-5 exactly (the Predictor, computed in this process once per image on the server's N threads); a hostile one
must be an error line. Reported: answers, wrong or failed ones, latency p50/p95, answers per second, the server's
memory (resident at the start, peak), and `resnets predict`'s own time per image (one at a time, here) beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def hostile_files(folder: Path, good: Path) -> list[Path]:
    (folder / "notes.jpg").write_text("not an image")
    (folder / "empty.png").touch()
    (folder / "truncated.jpg").write_bytes(good.read_bytes()[:600])
    Image.fromarray(np.zeros((13000, 13000), np.uint8)).save(folder / "bomb.png", optimize=True)
    return [folder / n for n in ("notes.jpg", "empty.png", "truncated.jpg", "bomb.png")]


def memory_kb(pid: int) -> dict:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) for k in ("VmRSS", "VmHWM")}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--model", required=True)
    p.add_argument("--images", required=True, type=Path)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1) // 2), help="the server's (and "
                   "the reference predictions')")
    a = p.parse_args(argv)
    import torch
    from gradio_client import Client, handle_file

    from resnets.app import resolve_model
    from resnets.deploy import image_files, load
    from resnets.results import describe_device, versions

    torch.set_num_threads(a.threads)  # as the server's network runs: the same bits
    images = image_files([str(a.images)])[:40]
    model_file, _ = resolve_model(a.model)
    predictor = load(model_file)
    times = []
    for img in images:  # `resnets predict`'s answer and time, one image at a time
        start = time.perf_counter()
        predictor.predict(img)
        times.append(time.perf_counter() - start)
    expected = {img.name: [list(t) for t in predictor.predict(img)] for img in images}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = Path(tempfile.mkdtemp())
    bad = hostile_files(tmp, images[0])
    server = subprocess.Popen([sys.executable, "-m", "resnets", "app", str(a.model), "--port", str(port),
                               "--threads", str(a.threads)],
                              stdout=open(tmp / "server.log", "w"), stderr=subprocess.STDOUT)
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        mem_start, peak = memory_kb(server.pid), [0]
        results, lock, stop = [], threading.Lock(), time.time() + a.seconds

        def client(k: int) -> None:
            c = Client(f"http://127.0.0.1:{port}/", verbose=False)
            i = k
            while time.time() < stop:
                hostile = i % 5 == 4
                f = bad[(i // 5) % len(bad)] if hostile else images[i % len(images)]
                start = time.perf_counter()
                try:
                    _, rows = c.predict([handle_file(str(f))], api_name="/predict")
                    ok = ("error" in rows[0]) if hostile else rows[0].get("top") == expected[f.name]
                    why = None if ok else json.dumps(rows)[:300]
                except Exception as e:  # noqa: BLE001 (a failed request is counted, not fatal)
                    ok, why = False, f"{type(e).__name__}: {e}"[:300]
                with lock:
                    results.append({"hostile": hostile, "ok": ok, "s": time.perf_counter() - start, "why": why})
                i += a.clients

        def sample() -> None:
            while time.time() < stop + 5:
                peak[0] = max(peak[0], memory_kb(server.pid)["VmRSS"])
                time.sleep(0.5)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(a.clients)]
        threading.Thread(target=sample, daemon=True).start()
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        mem_end = memory_kb(server.pid)
    finally:
        server.terminate()
        server.wait()
    good = [r["s"] for r in results if not r["hostile"]]
    q = statistics.quantiles(good, n=20)
    report = {"machine": describe_device(torch.device("cpu")), "versions": versions(),
              "model": str(model_file), "clients": a.clients, "threads": a.threads, "seconds": round(wall, 1),
              "answers": len(results),
              "hostile": sum(r["hostile"] for r in results), "wrong_or_failed": sum(not r["ok"] for r in results),
              "failures": [r["why"] for r in results if not r["ok"]][:5],
              "latency_p50_ms": 1000 * statistics.median(good), "latency_p95_ms": 1000 * q[18],
              "answers_per_s": len(results) / wall, "server_rss_mb": {"start": mem_start["VmRSS"] / 1024,
              "peak_sampled": peak[0] / 1024, "end": mem_end["VmRSS"] / 1024, "high_water": mem_end["VmHWM"] / 1024},
              "predict_ms_per_image": 1000 * statistics.median(times)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "versions"}, indent=1))
    os.system(f"rm -rf {tmp}")


if __name__ == "__main__":
    main()
