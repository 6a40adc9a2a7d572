#!/usr/bin/env bash
# The GPU run, prepared: install fastai from carried wheels, find or build data, run the benchmark
# suite and one real experiment, and leave everything under OUT. Meant for one NVIDIA GPU with torch
# installed and no network; about 8 minutes. Its CPU path (SMOKE=1) is what the tests run.
#
#   bash scripts/gpu.sh OUT [DATA]
#     OUT    folder for bench.json, bench.txt, the experiment's run folder and log.txt
#     DATA   images laid out as train/ and val/ (default: .data/imagenette2-160 if carried, else
#            /tmp/resnets-synthetic); where there are none, a synthetic Imagenette-shaped set is built
#            there on the spot (speed figures only, no accuracy)
#   WHEELS=dir  fastai's wheels (default: .whl, then ../shared/wheels-gpu)
#   SMOKE=1     tiny sizes and subsets: checks the whole path in a minute on a CPU
set -euo pipefail
OUT=${1:?usage: bash scripts/gpu.sh OUT [DATA]}
DATA=${2:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
exec > >(tee -a "$OUT/log.txt") 2>&1
PY=${PYTHON:-python3}
step() { echo "== $(date +%T) $*"; }

step "python and torch"
$PY -c "import torch, sys; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
if ! $PY -c "import fastai" 2>/dev/null; then
  WHEELS=${WHEELS:-$([ -d "$ROOT/.whl" ] && echo "$ROOT/.whl" || echo "$ROOT/../shared/wheels-gpu")}
  step "installing fastai from $WHEELS (no network)"
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/resnets-site "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/resnets-site:${PYTHONPATH:-}
fi
export PYTHONPATH=$ROOT:${PYTHONPATH:-}
$PY -c "import fastai, resnets; print('fastai', fastai.__version__, 'resnets', resnets.__version__)"

if [ -z "$DATA" ]; then
  if [ -d "$ROOT/.data/imagenette2-160/train" ]; then DATA=$ROOT/.data/imagenette2-160; else DATA=/tmp/resnets-synthetic; fi
fi
if [ ! -d "$DATA/train" ]; then
  step "no images at $DATA: building a synthetic Imagenette-shaped set there (speed figures only)"
  $PY -m resnets.synthetic "$DATA" ${SMOKE:+--train 16 --valid 8}
fi
echo "data: $DATA"

if [ -n "${SMOKE:-}" ]; then
  SUITE=(--models cnn,resnet18 --size 32 --bs 8 --data-bs 8 --repeats 1 --subset 8 --variants eager,channels_last)
  RUN=(--size 32 --presize 40 --bs 8 --subset 8 --epochs 1)
  SPEEDRUN=(--size 32 --presize 40 --test-size 40 --bs 8 --subset 8 --epochs 1)
  EXP=cnn
else
  SUITE=(--bs 256 --repeats 10 --variants eager,channels_last,compile --experiment resnet18 --epochs 2)
  RUN=(--epochs 5)
  SPEEDRUN=(--bs 512 --lr 1.2e-2)  # GPU: 4x the batch, lr x2 (square-root scaling; untuned); fp16, channels-last
  EXP=resnet18
fi
step "benchmark suite"
timeout 330 $PY -m resnets bench all --data "$DATA" --out "$OUT/bench.json" "${SUITE[@]}" | tee "$OUT/bench.txt" || echo "suite stopped early: what it measured is in bench.json"
step "experiment $EXP with the fast data path"
timeout 120 $PY -m resnets run $EXP --data "$DATA" --fast-data --out "$OUT/$EXP-fast" "${RUN[@]}" --no-progress || echo "run stopped early: its finished epochs are in results.json"
step "speedrun: the recipe, timed from start to final accuracy (target on one H100: under 5 s, evaluation included)"
START=$(date +%s.%N)
timeout 120 $PY -m resnets run speedrun --data "$DATA" --out "$OUT/speedrun" "${SPEEDRUN[@]}" --no-progress \
  || echo "speedrun stopped early: its finished epochs are in results.json"
echo "speedrun command: $($PY -c "import time; print(round(time.time() - $START, 1))") s"
$PY - "$OUT/speedrun/results.json" <<'PY' || true
import json, sys
r = json.load(open(sys.argv[1]))
first = next((h["elapsed"] for h in r["history"] if (h.get("accuracy") or 0) >= 0.757), None)
print(f"speedrun: accuracy {r['history'][-1]['accuracy']:.4f}, with flip TTA {r.get('tta_accuracy')}, "
      f"run {r['wall_time']:.1f} s; first past 75.7 % at {first if first is None else round(first, 1)} s")
PY
step "done"
ls -la "$OUT"
