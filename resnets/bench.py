"""Benchmarks (not tests): medians over repeats, each compared with a baseline measured in the same process."""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from .data import get_data
from .errors import InputError
from .files import atomic_write
from .layers import conv1x1_einsum
from .models import count_flops, create_model
from .precision import autocast_dtype, cpu_bf16
from .profiling import STAGES, format_profile, profile_training
from .recipes import configure
from .results import describe_device, versions
from .timing import median_seconds
from .training import run

__all__ = ["bench_conv1x1", "bench_models", "matmul_peak", "bench_data", "bench_epoch", "profile_training", "STAGES",
           "format_profile", "bench_loop", "format_loop", "command", "run_suite", "format_suite"]

# (batch, ni, nf, grid): a ResNet-50 bottleneck's 1x1 convs at 128 px input, stage 1 and stage 4
CONV1X1_SHAPES = ((32, 256, 64, 32), (32, 64, 256, 32), (32, 2048, 512, 4), (32, 512, 2048, 4))


@torch.no_grad()
def bench_conv1x1(shapes=CONV1X1_SHAPES, repeats: int = 20, device: str = "cpu") -> list[dict]:
    "Forward time of `conv1x1_einsum` against `F.conv2d` on the same tensors, with the largest difference."
    rows = []
    for bs, ni, nf, grid in shapes:
        x = torch.randn(bs, ni, grid, grid, device=device)
        w = torch.randn(nf, ni, 1, 1, device=device)
        t_conv = median_seconds(partial(F.conv2d, x, w), repeats)
        t_einsum = median_seconds(partial(conv1x1_einsum, x, w), repeats)
        diff = (conv1x1_einsum(x, w) - F.conv2d(x, w)).abs().max().item()
        rows.append({"shape": f"{bs}x{ni}x{grid}x{grid} -> {nf}", "conv2d_ms": 1e3 * t_conv,
                     "einsum_ms": 1e3 * t_einsum, "einsum_over_conv2d": t_einsum / t_conv,
                     "max_abs_diff": diff})
    return rows


def _train_step(model, opt, x, y) -> None:
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    if x.is_cuda:
        torch.cuda.synchronize()  # time the work, not its launch


def _amp_step(model, opt, x, y, dtype, scaler) -> None:
    opt.zero_grad()
    with torch.autocast(x.device.type, dtype=dtype):
        loss = F.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    if x.is_cuda:
        torch.cuda.synchronize()


VARIANTS = ("eager", "channels_last", "compile")


@contextlib.contextmanager
def measuring():
    """The same backend settings for every section of a benchmark: cuDNN's autotuner on (training's setting), and
    fp32 as true fp32 in convolutions and matmuls alike. cuDNN's default TF32 made the "fp32" model column TF32
    while the matmul peak it is divided by was true fp32 (a fraction of the peak above 100 %)."""
    matmul = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False, allow_tf32=False):
            yield
    finally:
        torch.set_float32_matmul_precision(matmul)


def bench_models(
    names, size: int = 128, bs: int = 32, repeats: int = 5, device: str = "cpu", variants=("eager",), precision="fp32"
) -> list[dict]:
    """Parameters, counted forward FLOPs per image, and training-step images/s on synthetic tensors.

    `variants`: any of eager, channels_last (NHWC memory layout) and compile (`torch.compile`, which
    compiles on first use: its warm-up is not timed). `precision`: fp32, fp16/bf16 autocast on CUDA, bf16 autocast on
    a CPU (fast where it has native bfloat16: `precision.cpu_bf16`; emulated elsewhere, and timed all the same)."""
    if unknown := set(variants) - set(VARIANTS):
        raise InputError(f"unknown variants {sorted(unknown)}: choose from {', '.join(VARIANTS)}")
    if precision == "fp16" and torch.device(device).type != "cuda":
        raise InputError(f"fp16 autocast is measured on CUDA only; on {device} use fp32 or bf16")
    rows = []
    for name in names:
        base = create_model(name, n_out=10)
        row = {"model": name, "size": size, "bs": bs, "precision": precision,
               "params": sum(p.numel() for p in base.parameters()),
               "gflops_per_image": count_flops(base, size) / 1e9}
        for variant in variants:
            try:
                with measuring():
                    row[f"{variant}_images_per_s"] = _variant_speed(name, variant, size, bs, repeats, device, precision)
            except Exception as e:  # noqa: BLE001 (compile above all: one variant's failure is a cell, not the end)
                if variant == variants[0]:
                    raise
                row[f"{variant}_images_per_s"], row[f"{variant}_error"] = None, f"{type(e).__name__}: {e}"[:300]
        row["train_images_per_s"] = row[f"{variants[0]}_images_per_s"]
        rows.append(row)
    return rows


def _variant_speed(name: str, variant: str, size: int, bs: int, repeats: int, device: str, precision: str) -> float:
    "Training-step images/s of one model in one variant and precision (bench_models)."
    model = create_model(name, n_out=10).to(device)
    x = torch.randn(bs, 3, size, size, device=device)
    y = torch.randint(0, 10, (bs,), device=device)
    if variant in ("channels_last", "compile"):
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    fwd = torch.compile(model) if variant == "compile" else model
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    if precision == "fp32":
        step = partial(_train_step, fwd, opt, x, y)
    else:
        dtype = autocast_dtype(precision)
        scaler = torch.amp.GradScaler(x.device.type, enabled=precision == "fp16")
        step = partial(_amp_step, fwd, opt, x, y, dtype, scaler)
    return bs / median_seconds(step, repeats=repeats, warmup=3 if variant == "compile" else 2)


def matmul_peak(device: str = "cpu", dtype=torch.float32, n: int = 2048, repeats: int = 10) -> float:
    "Measured GFLOP/s of a large square matmul: the ceiling a training step's FLOPs are compared against."
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)

    def mm():
        a @ b
        if a.is_cuda:
            torch.cuda.synchronize()

    with measuring():
        return 2 * n**3 / median_seconds(mm, repeats=repeats, warmup=2) / 1e9


def bench_data(data, presize: int = 160, resize: int = 128, bs: int = 128, batches: int = 20, repeats: int = 3,
               device=None, **kw) -> dict:
    """Training images/s delivered (decoded, augmented, on `device`) by the chapter's pipeline and the fast path.

    The fast path's one-off cache build is timed separately (it is reused by every later run)."""
    out = {"presize": presize, "resize": resize, "bs": bs, "batches": batches}
    for fast in (False, True):
        key = "fast" if fast else "stock"
        start = time.perf_counter()
        dls = get_data(data, presize, resize, bs, fast_data=fast, device=device, **kw)
        out[f"{key}_setup_s"] = time.perf_counter() - start
        dl, rates = dls.train, []
        out["bs"] = dl.bs  # get_data halves a batch size larger than the training set (it says so)
        for _ in range(repeats):
            it, n = iter(dl), 0
            start = time.perf_counter()
            for _ in range(min(batches, len(dl))):
                xb, _ = next(it)
                n += len(xb)
            if xb.is_cuda:
                torch.cuda.synchronize()
            rates.append(n / (time.perf_counter() - start))
            del it
        out[f"{key}_images_per_s"] = statistics.median(rates)
    out["speedup"] = out["fast_images_per_s"] / out["stock_images_per_s"]
    return out


def bench_epoch(experiment: str, data, epochs: int = 1, **kw) -> dict:
    "End-to-end seconds per epoch (train + validate) of an experiment with the chapter's pipeline, then the fast one."
    out = {"experiment": experiment, "epochs": epochs}
    for fast in (False, True):
        key = "fast" if fast else "stock"
        r = run(experiment, data=data, epochs=epochs, fast_data=fast, save=False, progress=False, **kw)
        out[f"{key}_epoch_s"] = r.epoch_time
        out[f"{key}_accuracy"] = r.accuracy
        out["settings"] = {k: r.settings[k] for k in ("size", "presize", "bs", "n_train", "n_valid")}
    out["speedup"] = out["stock_epoch_s"] / out["fast_epoch_s"]
    return out


def bench_loop(experiment: str, data, bs: int = 32, batches: int = 10, warmup: int = 2, repeats: int = 3,
               **kw) -> dict:
    """How near the processor's limit an experiment trains: in one call, the matmul peak (fp32 and bf16), the model's
    training step alone (synthetic images, channels-last, the precision the run picks) and the library's own fastai
    loop on real images (`profile_training`, both pipelines), each as images/s and as a fraction of the peak in
    its precision (a training step taken as 3x the counted forward FLOPs). `kw`: the run's settings (size, presize,
    subset, classes, ...)."""
    profile = profile_training(experiment, data, batches=batches, warmup=warmup, bs=bs, **kw)
    exp = configure(experiment, verbose=False, **{k: v for k, v in kw.items() if k in ("size", "presize")})
    precision = profile["fast"]["precision"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    peaks = {"fp32": matmul_peak(device, torch.float32), "bf16": matmul_peak(device, torch.bfloat16)}
    kind = "bf16" if precision == "bf16" else "fp32"
    (step,) = bench_models([exp.model], size=exp.size, bs=bs, repeats=repeats, device=device,
                           variants=("channels_last",), precision=kind)
    gflops, peak = step["gflops_per_image"], peaks[kind]
    frac = lambda ips: 3 * gflops * ips / peak  # noqa: E731
    rows = {"model step alone": step["channels_last_images_per_s"],
            **{f"library loop, {'fast path' if k == 'fast' else 'chapter pipeline'}": profile[k]["images_per_s"]
               for k in ("stock", "fast")}}
    return {"experiment": experiment, "model": exp.model, "size": exp.size, "bs": bs, "precision": precision,
            "compile": bool(kw.get("compile")),
            "device": describe_device(torch.device(device)), "threads": torch.get_num_threads(), "versions": versions(),
            "native_bf16": cpu_bf16() if device == "cpu" else None, "matmul_gflops": peaks, "gflops_per_image": gflops,
            "images_per_s": rows, "fraction_of_peak": {k: frac(v) for k, v in rows.items()}, "profile": profile}


def format_loop(r: dict) -> str:
    "`bench_loop`'s report as a table."
    compiled = ", the loop compiled" if r.get("compile") else ""
    lines = [f"{r['experiment']} ({r['model']}, {r['size']} px, bs {r['bs']}, {r['precision']}{compiled}) on "
             f"{r['device']}, "
             f"{r['threads']} threads, native bf16: {r['native_bf16'] or 'none'}",
             f"matmul peak: fp32 {r['matmul_gflops']['fp32']:,.0f} GFLOP/s, bf16 {r['matmul_gflops']['bf16']:,.0f} "
             f"GFLOP/s; a training image {3 * r['gflops_per_image']:.1f} GFLOP", "",
             f"{'':<34}{'images/s':>10}{'of peak':>9}"]
    for k, v in r["images_per_s"].items():
        lines.append(f"{k:<34}{v:>10.2f}{100 * r['fraction_of_peak'][k]:>8.1f}%")
    return "\n".join(lines + ["", format_profile(r["profile"])])


CHAPTER_MODELS = {"cnn": 128, "res_cnn": 128, "double_res_cnn": 128, "resnet18": 128, "resnet50": 224}


def run_suite(data, out=None, experiment: str = "cnn", device: str | None = None, bs: int = 32, repeats: int = 5,
              variants=("eager", "channels_last"), epochs: int = 1, subset=None, models=None,
              data_bs: int | None = None) -> dict:
    """The benchmark suite: matmul peak, model steps (per variant and precision), data and epoch throughput.

    Every figure is a median over repeats; each speed-up is measured against a baseline timed in the same
    call. Writes `out` (JSON) when given, after every section, so an interrupted suite keeps what it has."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precisions = ("fp32", "fp16", "bf16") if device.type == "cuda" else ("fp32", "bf16")  # CPU bf16: said if emulated
    report = {"device": describe_device(device), "versions": versions(), "threads": torch.get_num_threads(),
              "native_bf16": cpu_bf16() if device.type == "cpu" else None}

    def save():
        if out is not None:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            atomic_write(Path(out), json.dumps(report, indent=2).encode())

    report["matmul_gflops"] = {p: matmul_peak(str(device), autocast_dtype(p) or torch.float32) for p in precisions}
    save()
    report["models"] = []
    for name, size in (models or CHAPTER_MODELS).items():
        for precision in precisions:
            # the precision training uses (fp16 on CUDA, fp32 on CPU) gets every variant; the others eager only
            main = precision == ("fp16" if device.type == "cuda" else "fp32")
            (row,) = bench_models([name], size=size, bs=bs, repeats=repeats, device=str(device),
                                  variants=variants if main else ("eager",), precision=precision)
            best = max(v for k, v in row.items() if k.endswith("_images_per_s") and v is not None)
            # a training step is ~3x the forward FLOPs (forward, and backward for inputs and weights)
            row["fraction_of_matmul_peak"] = 3 * row["gflops_per_image"] * best / report["matmul_gflops"][precision]
            if precision != "fp32":  # eager against eager fp32, timed a moment ago in this call
                fp32 = next(r for r in report["models"] if r["model"] == name and r["precision"] == "fp32")
                row["speedup_over_fp32"] = row["eager_images_per_s"] / fp32["eager_images_per_s"]
            report["models"].append(row)
            save()
    if data is not None:
        report["data"] = bench_data(data, bs=data_bs or 128, device=device, subset=subset)
        save()
        report["epoch"] = bench_epoch(experiment, data, epochs=epochs, subset=subset, bs=data_bs)
        save()
        report["profile"] = profile_training(experiment, data, subset=subset, bs=data_bs)
        save()
    return report


def _cell(row: dict, variant: str) -> str:
    "A variant's images/s in a table: '-' where it was not measured, 'failed' where it failed (its error in the row)."
    v = row.get(f"{variant}_images_per_s")
    return f"{v:>15.1f}" if v is not None else f"{'failed' if f'{variant}_error' in row else '-':>15}"


def format_suite(report: dict) -> str:
    "The suite's report as text tables."
    native = f", native bf16: {report['native_bf16'] or 'none (emulated)'}" if "native_bf16" in report else ""
    lines = [f"device: {report['device']}, torch {report['versions']['torch']}, {report['threads']} threads{native}",
             "matmul peak: " + ", ".join(f"{p} {g:,.0f} GFLOP/s" for p, g in report["matmul_gflops"].items()), "",
             "model training step (forward + backward + SGD) on synthetic images, images/s:"]
    variants = [k[: -len("_images_per_s")] for k in report["models"][0] if k.endswith("_images_per_s")
                and k != "train_images_per_s"] if report.get("models") else []
    head = f"{'model':<16}{'size':>5}{'prec':>6}{'GFLOPs/img':>11}" + "".join(f"{v:>15}" for v in variants)
    lines += [head + f"{'of peak':>9}{'vs fp32':>9}"]
    for r in report.get("models", []):
        lines.append(f"{r['model']:<16}{r['size']:>5}{r['precision']:>6}{r['gflops_per_image']:>11.3f}"
                     + "".join(_cell(r, v)
                               for v in variants)
                     + f"{100 * r['fraction_of_matmul_peak']:>8.1f}%"
                     + (f"{r['speedup_over_fp32']:>8.2f}x" if "speedup_over_fp32" in r else f"{'':>9}"))
    if "data" in report:
        d = report["data"]
        lines += ["", f"data, training images/s delivered at {d['resize']} px (bs {d['bs']}, augmentation included):",
                  f"  chapter pipeline {d['stock_images_per_s']:.0f}, fast path {d['fast_images_per_s']:.0f}: "
                  f"{d['speedup']:.2f}x (fast path set-up, cache build or reuse: "
                  f"{d['fast_setup_s']:.1f} s)"]
    if "epoch" in report:
        e = report["epoch"]
        lines += ["", f"end-to-end epoch of {e['experiment']} (train {e['settings']['n_train']} + valid "
                  f"{e['settings']['n_valid']} images), seconds: chapter pipeline {e['stock_epoch_s']:.1f}, "
                  f"fast path {e['fast_epoch_s']:.1f}: {e['speedup']:.2f}x"]
    if "profile" in report:
        lines += ["", format_profile(report["profile"])]
    return "\n".join(lines)


def _print_conv1x1(repeats: int) -> None:
    print(f"1x1 convolution forward, median of {repeats}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'input -> nf':<26}{'conv2d ms':>10}{'einsum ms':>10}{'ratio':>7}{'max diff':>10}")
    for r in bench_conv1x1(repeats=repeats):
        print(f"{r['shape']:<26}{r['conv2d_ms']:>10.2f}{r['einsum_ms']:>10.2f}{r['einsum_over_conv2d']:>7.2f}"
              f"{r['max_abs_diff']:>10.1e}")


def _print_models(names: list[str], size: int, bs: int, repeats: int, device: str, variants: tuple[str, ...]) -> None:
    for n in names:
        create_model(n)  # unknown names fail here, listing the valid ones, before any timing
    print(f"training step (forward + backward + SGD) on synthetic {size} px images, bs {bs}, on {device}, median of "
          f"{repeats}, images/s")
    first = f"bf16 {variants[0]}"  # the same step under bf16 autocast, timed beside fp32's in this call
    print(f"{'model':<16}{'params':>12}{'GFLOPs/img':>12}" + "".join(f"{v:>15}" for v in (*variants, first))
          + f"{'bf16/fp32':>10}")
    for n in names:
        (r,) = bench_models([n], size=size, bs=bs, repeats=repeats, device=device, variants=variants)
        (b,) = bench_models([n], size=size, bs=bs, repeats=repeats, device=device, variants=variants[:1],
                            precision="bf16")
        bf16 = b[f"{variants[0]}_images_per_s"]
        print(f"{r['model']:<16}{r['params']:>12,}{r['gflops_per_image']:>12.3f}"
              + "".join(_cell(r, v) for v in variants)
              + f"{bf16:>15.1f}{bf16 / r[f'{variants[0]}_images_per_s']:>9.2f}x")


def command(args) -> None:
    "`resnets bench WHAT`: one benchmark, printed as a table (or JSON), and written to `args.out` when given."
    variants = tuple(args.variants.split(","))
    args.data, args.subset = getattr(args, "data", None), getattr(args, "subset", None)
    if args.what == "conv1x1":
        return _print_conv1x1(args.repeats)
    if args.what == "models":
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        return _print_models((args.models or "resnet18,resnet34,resnet50").split(","), args.size or 128, args.bs,
                             args.repeats, device, variants)
    if args.what in ("data", "epoch", "profile", "loop") and not args.data:
        raise InputError(f"`resnets bench {args.what}` needs real images: pass --data PATH")
    table = None  # the report's own table, where it has one (else JSON)
    if args.what == "data":
        report = bench_data(args.data, bs=args.data_bs, repeats=args.repeats, subset=args.subset, device=args.device)
    elif args.what == "profile":
        report = profile_training(args.experiment, args.data, subset=args.subset, bs=args.data_bs)
        table = format_profile
    elif args.what == "loop":
        sizes = {k: v for k, v in (("size", args.size), ("presize", args.presize), ("compile", args.compile)) if v}
        report = bench_loop(args.experiment, args.data, bs=args.bs, repeats=args.repeats, subset=args.subset, **sizes)
        table = format_loop
    elif args.what == "epoch":
        report = bench_epoch(args.experiment, args.data, epochs=args.epochs, subset=args.subset, bs=args.data_bs)
    else:
        report = run_suite(args.data, args.out, args.experiment, args.device, args.bs, args.repeats, variants,
                                 args.epochs, args.subset, data_bs=args.data_bs,
                                 models={m: args.size or 128 for m in args.models.split(",")} if args.models else None)
        print(format_suite(report))
        return print(f"saved {args.out}" if args.out else "")
    print(table(report) if table else json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
