#!/usr/bin/env bash
# The one GPU run that counts (one H100, no network, fastai not installed, 64 MiB travels, 10 minutes a command):
# the gpu tests, the chapter's experiments 1-4 at their settings on the chapter's pipeline (fp16) and one on the
# fast path, the speedrun, and `bench all` on CUDA; each step with its own timeout within a total budget, its exit
# code and time recorded; everything in OUT/summary.json (scripts/gpu_summary.py), beside log.txt, bench.json and
# bench.txt (the run folders, checkpoints included, stay on the machine). The exit code is 1 if any step failed.
#
#   make gpu-data                      # here, once: .data/imagenette2-160-gpu (~40 MiB) and .whl/ (the wheels)
#   bash scripts/gpu.sh --plan OUT     # here, on the CPU: everything but CUDA (what CI runs)
#   bash scripts/gpu.sh OUT            # there: device run, carry [".data/imagenette2-160-gpu", ".whl"],
#                                      #   command "bash scripts/gpu.sh $OUT", timeout_s 600
#
#   DATA=dir     the images (default .data/imagenette2-160-gpu, with its manifest.json); synthetic images are
#                refused: a GPU run must measure accuracy on real ones
#   WHEELS=dir   fastai's wheels (default .whl, then ../shared/wheels-gpu)
#   BUDGET=s     the total for all steps (default 540: the device's 10-minute command, less its start)
#   SMOKE=1      tiny settings, CPU allowed: checks every step end to end in a few minutes (a test runs it)
set -uo pipefail
PLAN=0
if [ "${1:-}" = "--plan" ]; then PLAN=1; shift; fi
OUT=${1:?usage: bash scripts/gpu.sh [--plan] OUT}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
exec > >(tee -a "$OUT/log.txt") 2>&1
PY=${PYTHON:-python3}
DATA=${DATA:-$ROOT/.data/imagenette2-160-gpu}
WHEELS=${WHEELS:-$([ -d "$ROOT/.whl" ] && echo "$ROOT/.whl" || echo "$ROOT/../shared/wheels-gpu")}
BUDGET=${BUDGET:-540}
RUNS=${RUNS:-/tmp/resnets-gpu-runs}
START=$(date +%s)
: > "$OUT/steps.jsonl"
die() { echo "gpu.sh: error: $*" >&2; exit 2; }
note() { echo "== $(date +%T) $*"; }

# step NAME TIMEOUT COMMAND...: run it (in --plan mode: record it, unrun), within what is left of the budget
step() {
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) )) t0 code
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$PLAN" = 1 ]; then
    $PY -c 'import json,sys; print(json.dumps({"name": sys.argv[1], "command": sys.argv[2], "timeout_s": int(sys.argv[3]), "exit_code": None, "seconds": None}))' "$name" "$*" "$limit" >> "$OUT/steps.jsonl"
    return 0
  fi
  note "$name (at most ${limit} s): $*"
  t0=$(date +%s.%N)
  if [ "$limit" -le 0 ]; then code=124; echo "no time left in the budget"; else timeout "$limit" "$@"; code=$?; fi
  $PY -c 'import json,sys,time; print(json.dumps({"name": sys.argv[1], "command": sys.argv[2], "timeout_s": int(sys.argv[3]), "exit_code": int(sys.argv[4]), "seconds": round(time.time() - float(sys.argv[5]), 1)}))' "$name" "$*" "$limit" "$code" "$t0" >> "$OUT/steps.jsonl"
  [ "$code" = 0 ] || echo "== $name failed (exit $code)"
}

note "python, torch, CUDA"
$PY -c "import torch, sys; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
  || die "torch cannot be imported by $PY"
if [ "$PLAN" = 0 ] && [ -z "${SMOKE:-}" ]; then
  $PY -c "import torch; assert torch.cuda.is_available()" 2>/dev/null || die "CUDA is not available here: this is the GPU run (use --plan on a CPU, or SMOKE=1)"
fi

note "fastai (wheels: $WHEELS)"
wheels() { ls "$WHEELS"/fastai-*.whl >/dev/null 2>&1 || die "no fastai wheel in $WHEELS: run make gpu-data (it copies ../shared/wheels-gpu to .whl)"; }
[ "$PLAN" = 1 ] && wheels  # they must travel
if ! $PY -c "import fastai" 2>/dev/null; then
  wheels
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/resnets-site "$WHEELS"/*.whl || die "the wheels in $WHEELS do not install"
  export PYTHONPATH=/tmp/resnets-site:${PYTHONPATH:-}
fi
export PYTHONPATH=$ROOT:${PYTHONPATH:-}
$PY -c "import fastai, resnets; print('fastai', fastai.__version__, 'resnets', resnets.__version__)" \
  || die "fastai or resnets cannot be imported"

note "data: $DATA"
[ -f "$DATA/manifest.json" ] && [ -d "$DATA/train" ] || die "no GPU copy of Imagenette at $DATA (its manifest.json and train/): run make gpu-data; synthetic images are not trained on here"
$PY - "$DATA" "$OUT/steps.jsonl" <<'PY' || die "the data at $DATA is not the copy its manifest describes"
import json, os, sys
from pathlib import Path
data = Path(sys.argv[1]); m = json.loads((data / "manifest.json").read_text())
n = sum(1 for p in data.rglob("*.jpg"))
least = int(os.environ.get("MIN_IMAGES") or (1 if os.environ.get("SMOKE") else 1000))
assert n == m["images"] and n >= least, f"{n} images, the manifest says {m['images']} (at least {least})"
with open(sys.argv[2], "a") as f:
    f.write(json.dumps({"data": {**m, "path": str(data)}}) + "\n")
print(f"{n} images, quality {m['quality']}, {m['bytes'] / 2**20:.1f} MiB")
PY

if [ "$PLAN" = 1 ]; then
  note "plan: what travels, and that every command parses"
  $PY - "$ROOT" "$DATA" "$WHEELS" <<'PY' || die "the upload would not fit, or its parts would not travel"
import os, subprocess, sys
from pathlib import Path
root, data, wheels = (Path(p).resolve() for p in sys.argv[1:4])
files = subprocess.run(["git", "-C", str(root), "ls-files", "-co", "--exclude-standard", "-z"], capture_output=True,
                       check=True).stdout.split(b"\0")
repo = sum((root / f.decode()).stat().st_size for f in files if f and (root / f.decode()).is_file())
size = lambda d: sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
total = repo + size(data) + size(wheels)
print(f"upload: repository {repo / 2**20:.1f} MiB + data {size(data) / 2**20:.1f} + wheels {size(wheels) / 2**20:.1f} "
      f"= {total / 2**20:.1f} MiB of 64")
assert total <= 64 * 2**20, "over the device's 64 MiB"
if not os.environ.get("PLAN_ANYWHERE"):
    for p in (data, wheels):
        assert p.is_relative_to(root), f"{p} is outside the repository: the device tool carries paths inside it"
PY
  for cmd in "run --help" "bench --help" "bench all --help"; do
    $PY -m resnets $cmd > /dev/null || die "resnets $cmd does not parse"
  done
  collected=$($PY -m pytest --co -q -m gpu "$ROOT/tests" -p no:cacheprovider 2>&1)  # (not piped to grep -q: its
  grep -q "::" <<< "$collected" || die "no gpu tests collected: $(tail -3 <<< "$collected")"  # early exit is a SIGPIPE)
fi

if [ -n "${SMOKE:-}" ]; then
  CH=(--size 32 --presize 40 --bs 8 --subset 8 --classes 2 --epochs 1 --no-progress)
  SUITE=(--models cnn --size 32 --bs 8 --data-bs 8 --repeats 1 --subset 24 --variants eager)
  SPEEDRUN=(--size 32 --presize 40 --test-size 40 --bs 8 --subset 8 --classes 2 --epochs 1 --no-progress)
else
  CH=(--no-progress)  # the chapter's settings, precision auto (fp16 on the GPU)
  SUITE=(--bs 256 --repeats 10 --variants eager,channels_last --experiment resnet18 --epochs 1)
  SPEEDRUN=(--no-progress)
fi
rm -rf "$RUNS" && mkdir -p "$RUNS"
# each step's limit (they add up to the 540 s budget; a step that ends early leaves its time to the later ones)
step "pytest -m gpu" 50 $PY -m pytest -q -m gpu -p no:cacheprovider "$ROOT/tests"
for exp in cnn res_cnn double_res_cnn; do
  step "$exp" 80 $PY -m resnets run $exp --data "$DATA" --out "$RUNS/$exp" "${CH[@]}"
done
step "resnet18" 90 $PY -m resnets run resnet18 --data "$DATA" --out "$RUNS/resnet18" "${CH[@]}"
step "resnet18 fast path" 40 $PY -m resnets run resnet18 --data "$DATA" --fast-data --out "$RUNS/resnet18-fast" "${CH[@]}"
step "speedrun" 40 $PY -m resnets run speedrun --data "$DATA" --out "$RUNS/speedrun" "${SPEEDRUN[@]}"
step "bench all" 80 $PY -m resnets bench all --data "$DATA" --out "$OUT/bench.json" "${SUITE[@]}"
[ -f "$OUT/bench.json" ] && $PY -c "import json,sys; from resnets.bench import format_suite; print(format_suite(json.load(open(sys.argv[1]))))" "$OUT/bench.json" > "$OUT/bench.txt"

note "summary"
$PY "$ROOT/scripts/gpu_summary.py" "$OUT" "$RUNS" "$([ "$PLAN" = 1 ] && echo plan || echo run)" || die "the summary does not follow its schema"
rm -f "$OUT/steps.jsonl"
$PY -c "import json,sys; s=json.load(open(sys.argv[1])); print(json.dumps({k: s[k] for k in ('device','failed','exit_code')})); [print(f\"{n}: {r['accuracy']} in {r['s_per_epoch']} s/epoch ({r['precision']})\") for n, r in s['runs'].items()]" "$OUT/summary.json"
exit "$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['exit_code'])" "$OUT/summary.json")"
