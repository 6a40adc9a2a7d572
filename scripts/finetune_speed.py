"""Seconds per fine-tuning epoch from ImageNet-shaped weights on this machine: resnet18/34/50 at 128, 160 and 224 px.

    python scripts/finetune_speed.py OUT.json [--data imagenette-160] [--per-class 30]

Each measurement is one `resnets run MODEL --pretrained FILE` on a 10-class folder of a few hundred images (the
first `--per-class` training images of each Imagenette class, 10 validation images each), fast path, one frozen
epoch then one of the whole network, as a user fine-tuning on their photos runs it. The weights are a timm
ResNet-D's with random values, written to a local safetensors file (speed does not depend on the values, and this
machine has no network); accuracy is not measured. Settings, versions and device go into the JSON.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import timm  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import resnets  # noqa: E402
from resnets.pretrained import TIMM_ARCHS  # noqa: E402
from resnets.results import describe_device, versions  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--data", default="imagenette-160")
    p.add_argument("--per-class", type=int, default=30)
    p.add_argument("--models", default="resnet18,resnet34,resnet50")
    p.add_argument("--sizes", default="128,160,224")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            weights = Path(tmp) / f"{name}.safetensors"
            net = timm.create_model(TIMM_ARCHS[(name, ())], pretrained=False)
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
            for size in map(int, args.sizes.split(",")):
                r = resnets.run(name, data=args.data, pretrained=str(weights), size=size, subset=(args.per_class, 10),
                                bs=32, epochs=1, freeze_epochs=1, fast_data=True, save=False, progress=False, seed=0)
                frozen, whole = (h["time"] for h in r.history)
                row = {"model": name, "size": size, "presize": r.settings["presize"], "n_train": r.settings["n_train"],
                       "n_valid": r.settings["n_valid"], "frozen_epoch_s": round(frozen, 1),
                       "whole_epoch_s": round(whole, 1), "whole_images_per_s": round(r.settings["n_train"] / whole, 1)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    report = {"rows": rows, "settings": {"bs": 32, "fast_data": True, "subset": [args.per_class, 10], "seed": 0},
              "device": describe_device("cpu"), "versions": versions(), "command": " ".join(sys.argv)}
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
