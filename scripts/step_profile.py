"""Where a training step of a recipe goes, in fastai's own loop, for each precision and for fastai's Adam against
the library's `ForeachAdam` (the same numbers, one call per stage and parameter group), all in one process.

    python scripts/step_profile.py OUT.json [--experiment speedrun] [--data PATH] [--batches 30]

Each row is `resnets.bench.profile_training` (the fast path and the chapter's pipeline, `warmup` untimed steps
first) with `OPT_FUNCS["adam"]` set to one optimiser; precision bf16 rows are left out where the processor has no
native bfloat16 (they would time emulation). Run it with nothing else heavy on the machine.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from fastai.optimizer import Adam

from resnets import optim
from resnets.bench import format_profile, profile_training
from resnets.precision import cpu_bf16
from resnets.results import describe_device, versions


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--experiment", default="speedrun")
    p.add_argument("--data")
    p.add_argument("--batches", type=int, default=30)
    a = p.parse_args(argv)
    precisions = ["fp32", "bf16"] if cpu_bf16() else ["fp32"]
    report = {"experiment": a.experiment, "device": describe_device(torch.device("cpu")), "versions": versions(),
              "native_bf16": cpu_bf16(), "threads": torch.get_num_threads(), "rows": []}
    foreach = optim.OPT_FUNCS["adam"]
    try:
        for precision in precisions:
            for name, opt in (("fastai Adam", Adam), ("ForeachAdam", foreach)):
                optim.OPT_FUNCS["adam"] = opt
                prof = profile_training(a.experiment, a.data, batches=a.batches, precision=precision)
                report["rows"].append({"precision": precision, "optimiser": name, **prof})
                print(f"\n{precision}, {name}:\n{format_profile(prof)}", flush=True)
                Path(a.out).write_text(json.dumps(report, indent=2))
    finally:
        optim.OPT_FUNCS["adam"] = foreach


if __name__ == "__main__":
    sys.exit(main())
