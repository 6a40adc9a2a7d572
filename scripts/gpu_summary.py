"""The one JSON that comes back from the GPU run (scripts/gpu.sh): every step's exit code and time, each run's
accuracy and seconds per epoch, the device and versions, and what was not run and why.

    python scripts/gpu_summary.py OUT RUNS MODE     # OUT/summary.json from OUT/steps.jsonl, RUNS/*/results.json
    python scripts/gpu_summary.py --check FILE      # exit 1 (naming the field) unless FILE follows the schema
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SCHEMA = "resnets-gpu-summary-v1"
STEP_KEYS = {"name": str, "command": str, "timeout_s": int, "exit_code": (int, type(None)), "seconds": (float, int,
             type(None))}
TOP_KEYS = {"schema": str, "mode": str, "device": str, "versions": dict, "data": (dict, type(None)), "steps": list,
            "runs": dict, "not_run": list, "failed": list, "exit_code": int}
NOT_RUN = [{"what": "experiment 5 (resnet50, 224 px, 20 epochs)",
            "why": "no 224-px copy of Imagenette fits in the 64 MiB that travels (the 224-px squares are 133 MB)"}]


def _run_row(results: dict) -> dict:
    s, h = results.get("settings", {}), results.get("history", [])
    times = sorted(e["time"] for e in h if e.get("time") is not None)
    return {"experiment": results.get("experiment"), "accuracy": h[-1].get("accuracy") if h else None,
            "tta_accuracy": results.get("tta_accuracy"), "epochs": len(h), "finished": results.get("finished"),
            "s_per_epoch": times[len(times) // 2] if times else None, "precision": s.get("precision"),
            "fast_data": s.get("fast_data"), "size": s.get("size"), "bs": s.get("bs"),
            "wall_s": results.get("wall_time"), "device": results.get("device")}


def build(out: Path, runs: Path, mode: str) -> dict:
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines() if line.strip()]
    rows = {p.parent.name: _run_row(json.loads(p.read_text())) for p in sorted(runs.glob("*/results.json"))}
    data = next((s["data"] for s in steps if s.get("data") is not None), None)  # the data's manifest, as read
    steps = [{k: s.get(k) for k in STEP_KEYS} for s in steps if "name" in s]
    try:
        import torch

        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (no CUDA)"
        versions = {"torch": torch.__version__, "cuda": torch.version.cuda}
    except Exception as e:  # noqa: BLE001 (the summary is written whatever failed)
        device, versions = f"unknown ({e})", {}
    failed = [s["name"] for s in steps if s["exit_code"] not in (0, None)]
    return {"schema": SCHEMA, "mode": mode, "device": device, "versions": versions, "data": data, "steps": steps,
            "runs": rows, "not_run": NOT_RUN, "failed": failed, "exit_code": 1 if failed else 0}


def check(summary: dict) -> list[str]:
    "What is wrong with `summary` against the schema (empty when it follows it)."
    problems = [f"{k}: missing or not {t}" for k, t in TOP_KEYS.items() if not isinstance(summary.get(k), t)]
    if summary.get("schema") != SCHEMA:
        problems.append(f"schema: {summary.get('schema')!r}, not {SCHEMA!r}")
    for i, step in enumerate(summary.get("steps") or []):
        problems += [f"steps[{i}].{k}: not {t}" for k, t in STEP_KEYS.items() if not isinstance(step.get(k), t)]
    return problems


def main(argv: list[str]) -> int:
    if argv[:1] == ["--check"]:
        problems = check(json.loads(Path(argv[1]).read_text()))
        for p in problems:
            print(f"summary: {p}", file=sys.stderr)
        return 1 if problems else 0
    out, runs, mode = Path(argv[0]), Path(argv[1]), argv[2]
    summary = build(out, runs, mode)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    problems = check(summary)
    for p in problems:
        print(f"summary: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
