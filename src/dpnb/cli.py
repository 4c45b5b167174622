"""The ``dpnb`` command line.

``dpnb privacy`` is this book's ``compute_dp_sgd_privacy``::

    dpnb privacy --dataset-size 60000 --batch-size 256 --noise-multiplier 1.1 --epochs 60 --delta 1e-5
    dpnb privacy --sample-rate 0.01 --steps 5000 --noise-multiplier 1.0 --accountant prv --json
    dpnb privacy --dataset-size 60000 --batch-size 256 --epochs 60 --target-epsilon 3

``dpnb book`` executes the chapters and builds the HTML book (see :mod:`dpnb.book`); ``dpnb sweep``
executes one chapter at every point of a parameter grid on Dask (see :mod:`dpnb.sweep`).

Bad input prints one line, ``dpnb <command>: error: ...``, and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import NoReturn

from dpnb.params import ParameterError, Unavailable, check_int, check_number


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, without the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _privacy_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("the run, given as data size, batch size and epochs")
    g.add_argument("--dataset-size", type=str, metavar="N", help="number of private training examples")
    g.add_argument("--batch-size", type=str, metavar="B", help="expected (Poisson) batch size")
    g.add_argument("--epochs", type=str, metavar="E", help="passes over the data (may be fractional)")
    g = p.add_argument_group("or as sampling rate and steps")
    g.add_argument("--sample-rate", type=str, metavar="Q", help="Poisson sampling rate in (0, 1]")
    g.add_argument("--steps", type=str, metavar="S", help="number of noisy gradient steps")
    p.add_argument("--noise-multiplier", type=str, metavar="SIGMA",
                   help="noise std divided by the clipping norm (> 0)")
    p.add_argument("--target-epsilon", type=str, metavar="EPS",
                   help="instead of --noise-multiplier: print the sigma that reaches this epsilon")
    p.add_argument("--delta", type=str, default="1e-5", help="delta in (0, 1) (default 1e-5)")
    p.add_argument("--accountant", choices=["rdp", "prv", "all"], default="all",
                   help="which accountant(s) to use (default all)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _resolve_run(a: argparse.Namespace) -> tuple[float, int]:
    by_size = [a.dataset_size, a.batch_size, a.epochs]
    by_rate = [a.sample_rate, a.steps]
    if all(v is not None for v in by_rate) and not any(v is not None for v in by_size):
        q = check_number("--sample-rate", a.sample_rate, low=0, high=1, low_open=True)
        steps = check_int("--steps", a.steps, low=1, high=MAX_STEPS)
        return q, steps
    if all(v is not None for v in by_size) and not any(v is not None for v in by_rate):
        n = check_int("--dataset-size", a.dataset_size, low=1)
        b = check_int("--batch-size", a.batch_size, low=1)
        e = check_number("--epochs", a.epochs, low=0, low_open=True)
        if b > n:
            raise ParameterError(f"--batch-size must be at most --dataset-size ({n}), got {b}")
        from dpnb.privacy import sample_rate_and_steps

        q, steps = sample_rate_and_steps(dataset_size=n, batch_size=b, epochs=e)
        if steps > MAX_STEPS:
            raise ParameterError(f"--epochs: the run would have {steps:g} steps; at most {MAX_STEPS:g} are accounted")
        return q, steps
    raise ParameterError(
        "give either --dataset-size, --batch-size and --epochs, or --sample-rate and --steps"
    )


#: Most steps `dpnb privacy` accounts (RDP composes in O(1), but a step count past this is a typo).
MAX_STEPS = 10**12


def privacy_main(a: argparse.Namespace) -> int:
    """ε (or σ for a target ε) under each accountant asked for; an accountant that cannot answer
    within its limits is reported as such, next to the others, never as a traceback."""
    from dpnb import privacy

    q, steps = _resolve_run(a)
    delta = check_number("--delta", a.delta, low=0, high=1, low_open=True, high_open=True)
    if (a.noise_multiplier is None) == (a.target_epsilon is None):
        raise ParameterError("give exactly one of --noise-multiplier and --target-epsilon")
    accountants = list(privacy.ACCOUNTANTS) if a.accountant == "all" else [a.accountant]
    run = privacy.SampledGaussianEvent(noise_multiplier=None, sample_rate=q, steps=steps)
    target = None if a.target_epsilon is None else check_number("--target-epsilon", a.target_epsilon,
                                                                 low=0, low_open=True)
    sigma_in = None if a.noise_multiplier is None else check_number("--noise-multiplier", a.noise_multiplier,
                                                                      low=0, low_open=True)
    sigmas: dict[str, float] = {}
    eps: dict[str, float | None] = {}
    unavailable: dict[str, str] = {}
    for acc in accountants:
        try:
            if target is not None:
                try:
                    sigmas[acc] = privacy.calibrate_noise_multiplier(run, target_epsilon=target, delta=delta,
                                                                     accountant=acc)
                except privacy.AccountantLimit:
                    raise
                except ParameterError as e:
                    raise ParameterError(f"--target-epsilon: {e}") from None
            sigma = sigmas.get(acc, sigma_in)
            err = privacy.prv_eps_error(target) if target is not None else 0.01
            eps[acc] = privacy.epsilon(run.with_noise(sigma), delta=delta, accountant=acc,  # type: ignore[arg-type]
                                       prv_eps_error=err)
        except privacy.AccountantLimit as e:
            eps[acc] = None
            sigmas.pop(acc, None)
            unavailable[acc] = str(e)
    out: dict[str, object] = {"sample_rate": q, "steps": steps, "delta": delta,
                              "sampling": run.sampling, "adjacency": run.adjacency}
    if target is not None:
        out["target_epsilon"] = target
        out["noise_multiplier"] = {acc: sigmas.get(acc) for acc in accountants}
    else:
        out["noise_multiplier"] = sigma_in
    out["epsilon"] = eps
    if unavailable:
        out["unavailable"] = unavailable
    order = None
    if "rdp" in accountants:
        sig_rdp = sigmas["rdp"] if target is not None else sigma_in
        order = privacy.rdp_epsilon(noise_multiplier=float(sig_rdp), sample_rate=q, steps=steps,  # type: ignore[arg-type]
                                    delta=delta)[1]
        out["rdp_order"] = order
    if a.json:
        print(json.dumps(out))
        return 0
    print("DP-SGD with Poisson sampling, add/remove-one adjacency")
    print(f"  sample rate q      = {q:.6g}")
    print(f"  steps              = {steps}")
    print(f"  delta              = {delta:g}")
    if target is not None:
        print(f"  target epsilon     = {target:g}")
    else:
        print(f"  noise multiplier   = {sigma_in:g}")
    for acc in accountants:
        name = acc.upper()
        if acc in unavailable:
            what = "noise multiplier" if target is not None else "epsilon (" + name + ")"
            print(f"  {what:<19s}= not computed ({name}): {unavailable[acc]}")
        elif target is not None:
            print(f"  noise multiplier   = {sigmas[acc]:.5g}  ({name}, epsilon = {eps[acc]:.5g})")
        else:
            print(f"  {'epsilon (' + name + ')':<19s}= {eps[acc]:.5g}")
    if order is not None:
        print(f"  optimal RDP order  = {order:g}")
    return 0


def bench_main(a: argparse.Namespace) -> int:
    from dpnb.cost import measure_grid, summarize
    from dpnb.devices import select_device

    for b in a.batch_sizes:
        check_int("--batch-sizes", b, low=1, high=60_000)
    if a.limit is not None:
        check_int("--limit", a.limit, low=max(a.batch_sizes), high=60_000 if a.workload == "mnist-cnn" else 50_000)
    if a.max_batches is not None:
        check_int("--max-batches", a.max_batches, low=1)
    check_int("--repeats", a.repeats, low=1, high=100)
    select_device(a.device)  # a clear error for cuda without CUDA
    from dpnb.data import load_dataset

    load_dataset("mnist" if a.workload == "mnist-cnn" else "cifar10", split="train")  # one line if missing
    df = measure_grid(methods=a.methods, batch_sizes=a.batch_sizes, limit=a.limit,
                      max_batches=a.max_batches, device=a.device, workload=a.workload, repeats=a.repeats)
    table = summarize(df)
    cols = ["method", "batch_size", "device", "samples_per_second", "seconds_per_epoch",
            "slowdown_vs_non_private"] + (["slowdown_min", "slowdown_max"] if a.repeats > 1 else []) + \
        ["peak_memory_mb"] + (["peak_increase_mb"] if "peak_increase_mb" in table else [])
    name = "MNIST CNN (dpnb.models.mnist_cnn)" if a.workload == "mnist-cnn" else "CIFAR-10 CNN (cifar_cnn, width 16)"
    medians = f"; medians of {a.repeats} repeats, slowdowns paired within a repeat" if a.repeats > 1 else ""
    print(f"{name}, {df['examples'].iloc[0]} examples per run; memory: "
          f"{df['memory_kind'].iloc[0]}{medians}")
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    if a.csv:
        df.to_csv(a.csv, index=False)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="dpnb", description="Helpers of the dpnb book on differentially private deep learning.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    pp = sub.add_parser("privacy", help="epsilon of DP-SGD (RDP and PRV accountants), or sigma for a target epsilon")
    _privacy_args(pp)
    pc = sub.add_parser("bench", help="time per epoch and peak memory: non-private vs DP-SGD (MNIST or CIFAR-10 CNN)")
    pc.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024], metavar="B")
    pc.add_argument("--methods", nargs="+", default=["non-private", "hooks", "functorch", "ghost", "bk"],
                    choices=["non-private", "hooks", "functorch", "ghost", "bk"], metavar="METHOD")
    pc.add_argument("--workload", choices=["mnist-cnn", "cifar10-cnn"], default="mnist-cnn",
                    help="the MNIST chapter's CNN or the CIFAR-10 chapter's tanh + GroupNorm CNN")
    pc.add_argument("--limit", type=int, default=None, help="train on a seeded subset of this size")
    pc.add_argument("--max-batches", type=int, default=None, help="time only this many steps per run")
    pc.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    pc.add_argument("--repeats", type=int, default=1,
                    help="time every (method, batch size) this many times, methods interleaved; the table shows "
                         "medians and the range of the slowdown, the CSV every measurement")
    pc.add_argument("--csv", default=None, help="also write every measurement to this CSV file (tidy: one row each)")
    pb = sub.add_parser("book", help="execute the chapters (papermill) and build the HTML book")
    from dpnb.book import add_arguments

    add_arguments(pb)
    from dpnb import sweep

    ps = sub.add_parser("sweep", help="execute a chapter at every point of a parameter grid (Dask), one tidy CSV")
    sweep.add_arguments(ps)
    from dpnb import launch

    pt = sub.add_parser("train", help="one DP-SGD run of a book model (MNIST, Fashion-MNIST, CIFAR-10); torchrun too")
    launch.add_arguments(pt)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    prog = f"dpnb {a.command}"
    try:
        if a.command == "privacy":
            return privacy_main(a)
        if a.command == "bench":
            return bench_main(a)
        if a.command == "train":
            from dpnb.launch import main as train_main

            return train_main(a)
        if a.command == "sweep":
            from dpnb.sweep import main as sweep_main

            return sweep_main(a)
        from dpnb.book import main as book_main

        return book_main(a)
    except ParameterError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except Unavailable as e:  # data or weights missing: the message says how to provide them
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
