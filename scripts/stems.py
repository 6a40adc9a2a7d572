"""Training throughput of ResNet-18 at half width with three stems, model only (synthetic images, no data loading).

    python scripts/stems.py [OUT.json]

The chapter's stem is three 3x3 convs (32, 32, 64 wide, here halved) at half the input's resolution, before the
max-pool: on a CPU its convolutions and BatchNorms over that large grid cost a quarter of a training step. `--stem`
takes fewer convs. Steps: batch 128, Adam, channels-last, 2 warm-up steps then the median of 5 timed
(resnets.timing), each size and stem in turn.
"""
import json
import sys

import torch

from resnets.models import create_model
from resnets.timing import median_seconds

STEMS = {"chapter (32,32,64)": (32, 32, 64), "two convs (32,64)": (32, 64), "one conv (64)": (64,)}


def images_per_s(stem: tuple[int, ...], size: int, bs: int = 128, steps: int = 5) -> float:
    torch.manual_seed(0)
    model = create_model("resnet18", width=0.5, stem=stem).to(memory_format=torch.channels_last)
    x = torch.randn(bs, 3, size, size).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (bs,))
    opt = torch.optim.Adam(model.parameters())

    def step():
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()

    return bs / median_seconds(step, repeats=steps, warmup=2)


if __name__ == "__main__":
    rows = []
    for size in (64, 96, 128):
        for name, stem in STEMS.items():
            rows.append({"size": size, "stem": name, "images_per_s": round(images_per_s(stem, size), 1)})
            print(rows[-1], flush=True)
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            json.dump({"threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows}, f, indent=1)
