"""The cost of privacy: time per epoch and peak memory of DP-SGD against non-private SGD.

DP-SGD needs each example's gradient before clipping. Opacus gets them three ways:
``hooks`` (per-layer hooks materialise per-sample gradients, Yousefpour et al. 2021),
``functorch`` (``vmap`` over ``grad``) and ``ghost`` clipping (Li et al. 2022, "Large
language models can be strong differentially private learners"; Bu et al. 2023), which
computes per-sample gradient *norms* without materialising the gradients and pays a second
backward pass instead. :func:`measure` times training steps of one method in a fresh
process, so that the peak memory of each run is its own:

* on CUDA, ``torch.cuda.max_memory_allocated``;
* on CPU, the process's peak resident set size (``VmHWM``), reported both in total and as
  the increase over the resident size just before training (after data and model are loaded).

Example (a few batches of a small subset; ``dpnb bench`` runs the full table)::

    >>> from dpnb.cost import measure
    >>> row = measure(method="hooks", batch_size=64, limit=256, max_batches=2)
    >>> row["method"], row["batch_size"], row["samples_per_second"] > 0
    ('hooks', 64, True)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import pandas as pd

METHODS = ("non-private", "hooks", "functorch", "ghost", "bk")  # bk: book-keeping clipping (dpnb.bookkeeping)


def _status_mb(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, in MiB.

    ``VmHWM`` belongs to the process's own address space, so unlike ``ru_maxrss`` it does not
    carry over the parent's resident memory through fork and exec.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def _workload(name: str, *, limit: int | None, seed: int, image_size: int) -> tuple[Any, Any]:
    """(training set, model) of a workload: ``mnist-cnn`` or ``flowers-resnet18`` (end-to-end
    fine-tuning of a ResNet-18 whose BatchNorms are GroupNorms, on ``image_size`` px images)."""
    from dpnb import data, models

    if name == "mnist-cnn":
        return data.mnist_tensors("mnist", split="train", limit=limit, seed=seed), models.mnist_cnn()
    if name == "cifar10-cnn":  # the CIFAR-10 chapter's tanh + GroupNorm CNN at its book-profile width
        return (data.cifar10_tensors(split="train", limit=limit, seed=seed, progress=False),
                models.cifar_cnn(width=16))
    import torch
    from torch.utils.data import TensorDataset
    from torchvision import transforms as T
    from torchvision.models import resnet18

    from dpnb.train import make_dp_compatible

    tf = T.Compose([T.Resize(image_size), T.CenterCrop(image_size), T.ToTensor(),
                    T.Normalize(*data.NORMALIZATION["flowers102"])])
    ds = data.load_dataset("flowers102", split="large-train", transform=tf)
    if limit is not None:
        ds = data.subset(ds, min(limit, len(ds)), seed=seed)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = data.targets(ds)
    return TensorDataset(x, y), models.out_of_place_residuals(make_dp_compatible(resnet18(num_classes=102)))


def _measure_here(*, method: str, batch_size: int, limit: int | None, max_batches: int | None,
                  device: str, seed: int, workload: str = "mnist-cnn", image_size: int = 64) -> dict[str, Any]:
    import torch
    from torch import nn

    from dpnb.devices import select_device
    from dpnb.train import BookKeepingStep, TrainConfig, _loader, make_private

    torch.manual_seed(seed)
    dev = select_device(device)
    train_set, model = _workload(workload, limit=limit, seed=seed, image_size=image_size)
    model = model.to(dev)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    criterion: Any = nn.CrossEntropyLoss()
    # the loader dpnb.train uses (one gather per batch from a TensorDataset), so that the table times training
    loader = _loader(train_set, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    bk = None
    if method == "bk":
        cfg = TrainConfig(epochs=1, batch_size=batch_size, noise_multiplier=1.0, max_grad_norm=1.0,
                          grad_sample_mode="bk")
        bk = BookKeepingStep(model, optimizer, loader, cfg, generator=torch.Generator().manual_seed(seed))
        loader = bk.loader
    elif method != "non-private":
        cfg = TrainConfig(epochs=1, batch_size=batch_size, noise_multiplier=1.0, max_grad_norm=1.0,
                          grad_sample_mode=method)
        _, model, optimizer, criterion, loader, _ = make_private(model, optimizer, criterion, loader, cfg)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    rss_before = _status_mb("VmRSS") if dev.type == "cpu" else 0.0
    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = x.to(dev), y.to(dev)
        optimizer.zero_grad(set_to_none=True)
        if bk is not None:
            bk.step(x, y)
            return
        criterion(model(x), y).backward()
        optimizer.step()

    batches_iter = iter(loader)
    step(*next(batches_iter))  # warm-up (one-time kernel and hook set-up): not timed, memory counted
    seen, batches = 0, 0
    t0 = time.perf_counter()
    for x, y in batches_iter:
        step(x, y)
        seen += len(y)
        batches += 1
        if max_batches is not None and batches >= max_batches:
            break
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    row: dict[str, Any] = dict(workload=workload, method=method, batch_size=batch_size, device=dev.type,
                               examples=seen, batches=batches, seconds=seconds,
                               seconds_per_step=seconds / max(batches, 1), samples_per_second=seen / seconds,
                               seconds_per_epoch=len(train_set) / (seen / seconds),
                               dataset_size=len(train_set))
    if dev.type == "cuda":
        row["peak_memory_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
        row["memory_kind"] = "cuda max_memory_allocated"
    else:
        peak = _status_mb("VmHWM")
        row["peak_memory_mb"] = peak
        row["peak_increase_mb"] = max(peak - rss_before, 0.0)
        row["memory_kind"] = "cpu peak RSS"
    return row


WORKLOADS = ("mnist-cnn", "cifar10-cnn", "flowers-resnet18")


def measure(*, method: str, batch_size: int, limit: int | None = None, max_batches: int | None = None,
            device: str = "auto", seed: int = 0, workload: str = "mnist-cnn", image_size: int = 64) -> dict[str, Any]:
    """Time ``max_batches`` steps (default: the rest of one epoch) of a workload in a fresh process.

    ``workload``: the MNIST CNN (``mnist-cnn``) or ResNet-18 on Flowers-102 (``flowers-resnet18``).

    One warm-up step comes first and is not timed; ``seconds_per_epoch`` extrapolates the
    timed steps to the whole training set.
    """
    from dpnb.params import check_choice, check_int

    check_choice("method", method, METHODS)
    check_choice("workload", workload, WORKLOADS)
    check_int("batch_size", batch_size, low=1)
    cmd = [sys.executable, "-m", "dpnb.cost", "--method", method, "--batch-size", str(batch_size),
           "--device", device, "--seed", str(seed), "--workload", workload, "--image-size", str(image_size)]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    if max_batches is not None:
        cmd += ["--max-batches", str(max_batches)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"cost measurement failed ({method}, batch {batch_size}): "
                           + (proc.stderr.strip().splitlines() or ["no output"])[-1])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_grid(*, methods: Sequence[str] = METHODS, batch_sizes: Sequence[int] = (256, 1024),
                 limit: int | None = None, max_batches: int | None = None, max_examples: int | None = None,
                 device: str = "auto", progress: bool = True, workload: str = "mnist-cnn",
                 image_size: int = 64, repeats: int = 1) -> pd.DataFrame:
    """:func:`measure` for every (method, batch size), ``repeats`` times; one row per measurement.

    ``max_examples`` times about that many examples per run (``ceil(max_examples / batch)``
    steps), so that small and large batches are timed over a similar amount of work.
    Each repeat times every method once, one after another, and ``slowdown_vs_non_private``
    divides by the non-private time *of the same repeat and batch size* (a paired ratio: a slow
    spell of the machine then slows both sides of one ratio, not one side of all of them);
    :func:`summarize` takes the median over repeats.
    """
    from dpnb.params import check_int
    from dpnb.progress import progress as progress_bar

    check_int("repeats", repeats, low=1, high=100)
    grid = [(r, m, b) for r in range(repeats) for b in batch_sizes for m in methods]
    rows = [dict(measure(method=m, batch_size=b, limit=limit, device=device, workload=workload,
                         image_size=image_size, max_batches=-(-max_examples // b) if max_examples else max_batches),
                 repeat=r)
            for r, m, b in progress_bar(grid, desc="cost of privacy", enable=progress)]
    df = pd.DataFrame(rows)
    base = df[df["method"] == "non-private"].set_index(["repeat", "batch_size"])["seconds_per_epoch"]
    key = pd.MultiIndex.from_frame(df[["repeat", "batch_size"]])
    df["slowdown_vs_non_private"] = df["seconds_per_epoch"].to_numpy() / base.reindex(key).to_numpy()
    return df


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, batch size) of :func:`measure_grid`'s rows: medians over the repeats,
    the range of the paired slowdown (``slowdown_min``, ``slowdown_max``) and the largest peak memory.

        >>> rows = pd.DataFrame(dict(method=["non-private", "bk"] * 3, batch_size=256, repeat=[0, 0, 1, 1, 2, 2],
        ...     device="cpu", samples_per_second=1.0, seconds_per_epoch=[2, 3, 2, 4, 3, 4.2],
        ...     slowdown_vs_non_private=[1, 1.5, 1, 2, 1, 1.4], peak_memory_mb=1.0))
        >>> summarize(rows)[["method", "repeats", "slowdown_vs_non_private", "slowdown_min", "slowdown_max"]]
                method  repeats  slowdown_vs_non_private  slowdown_min  slowdown_max
        0  non-private        3                      1.0           1.0           1.0
        1           bk        3                      1.5           1.4           2.0
    """
    order = {m: i for i, m in enumerate(dict.fromkeys(df["method"]))}
    g = df.groupby(["batch_size", "method", "device"], sort=False)
    out = g.agg(repeats=("repeat", "size"), samples_per_second=("samples_per_second", "median"),
                seconds_per_epoch=("seconds_per_epoch", "median"),
                slowdown_vs_non_private=("slowdown_vs_non_private", "median"),
                slowdown_min=("slowdown_vs_non_private", "min"), slowdown_max=("slowdown_vs_non_private", "max"),
                peak_memory_mb=("peak_memory_mb", "max"),
                **({"peak_increase_mb": ("peak_increase_mb", "max")} if "peak_increase_mb" in df else {}))
    out = out.reset_index()
    out = out.sort_values(["batch_size", "method"], key=lambda c: c.map(order) if c.name == "method" else c,
                          kind="stable")
    cols = ["method", "batch_size", "device"] + [c for c in out if c not in ("method", "batch_size", "device")]
    return out[cols].reset_index(drop=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dpnb.cost")
    p.add_argument("--method", choices=METHODS, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--limit", type=int)
    p.add_argument("--max-batches", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workload", choices=WORKLOADS, default="mnist-cnn")
    p.add_argument("--image-size", type=int, default=64)
    a = p.parse_args(argv)
    import warnings

    warnings.simplefilter("ignore")
    row = _measure_here(method=a.method, batch_size=a.batch_size, limit=a.limit, max_batches=a.max_batches,
                        device=a.device, seed=a.seed, workload=a.workload, image_size=a.image_size)
    print(json.dumps(row))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
