"""``dpnb train``: one DP-SGD run of a book model from the command line, on one process or under torchrun.

The flags are those of the original ``train.py`` scripts::

    dpnb train --dataset mnist --epochs 5 --batch-size 512 --learning-rate 1 --target-epsilon 3
    dpnb train --dataset cifar10 --noise-multiplier 1.5 --max-grad-norm 0.1 --device cuda --json
    torchrun --nproc_per_node 2 -m dpnb.launch --dataset mnist --target-epsilon 3 --out run.json

The run goes through :func:`dpnb.train.train` (the book's DP-SGD: Opacus, Poisson sampling at
q = 1/⌈N/B⌉). Under ``torchrun --nproc_per_node N`` the processes form a group (gloo on CPUs, NCCL on
GPUs, :mod:`dpnb.distributed`) and run Opacus's distributed DP-SGD: the logical batch B is split
across the processes, each Poisson-samples its shard at the same q, rank 0 adds the noise once,
and the clipped sums are averaged; the run's ε is that of the global run, the same as one process
with the same B. Only rank 0 prints and writes ``--out`` (atomically, once).

Models: ``mnist_cnn`` (MNIST, Fashion-MNIST) and ``cifar_cnn`` (CIFAR-10), as in the chapters.
``--limit`` trains on a seeded subset, ``--test-limit`` evaluates on one (quick checks).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dpnb.params import ParameterError, Unavailable, check_choice, check_int, check_number

__all__ = ["add_arguments", "main", "run"]

DATASETS = ("mnist", "fashion-mnist", "cifar10")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="mnist", help=f"one of {', '.join(DATASETS)} (default mnist)")
    p.add_argument("--epochs", default="1", help="passes over the data (default 1)")
    p.add_argument("--batch-size", default="256", help="expected (Poisson) batch size over all processes")
    p.add_argument("--learning-rate", "--lr", default="1.0", dest="learning_rate", help="SGD step size (default 1)")
    p.add_argument("--momentum", default="0", help="SGD momentum in [0, 1) (default 0)")
    p.add_argument("--noise-multiplier", "--sigma", default=None, dest="noise_multiplier",
                   help="noise std / clipping norm; or give --target-epsilon")
    p.add_argument("--target-epsilon", default=None, help="calibrate sigma to this epsilon for the planned steps")
    p.add_argument("--max-grad-norm", "-c", default="1.0", dest="max_grad_norm", help="clipping norm C (default 1)")
    p.add_argument("--delta", default="1e-5", help="delta in (0, 1) (default 1e-5)")
    p.add_argument("--disable-dp", action="store_true", help="train without privacy (the non-private twin)")
    p.add_argument("--grad-sample-mode", default="hooks", help="hooks, functorch, ghost or bk (one process only)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--seed", default="0", help="seed of the model, the sampling and the noise (default 0)")
    p.add_argument("--limit", default=None, help="train on a seeded subset of this many examples")
    p.add_argument("--test-limit", default=None, help="evaluate on a seeded subset of the test set")
    p.add_argument("--out", default=None, help="write the result (JSON) to this file")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def _data(dataset: str, limit: int | None, test_limit: int | None, seed: int) -> tuple[Any, Any]:
    from dpnb import data

    if dataset == "cifar10":
        return (data.cifar10_tensors(split="train", limit=limit, seed=seed, progress=False),
                data.cifar10_tensors(split="test", limit=test_limit, seed=seed, progress=False))
    return (data.mnist_tensors(dataset, split="train", limit=limit, seed=seed),
            data.mnist_tensors(dataset, split="test", limit=test_limit, seed=seed))


def run(a: argparse.Namespace) -> dict[str, Any]:
    """Check the flags, train, and return the result (on every process; rank 0's is the one reported)."""
    from dpnb import distributed, models
    from dpnb.data import TEST_SIZES, TRAIN_SIZES
    from dpnb.devices import select_device
    from dpnb.train import GRAD_SAMPLE_MODES, TrainConfig, train

    dataset = check_choice("--dataset", a.dataset, DATASETS)
    limit = None if a.limit is None else check_int("--limit", a.limit, low=1, high=TRAIN_SIZES[dataset])
    test_limit = None if a.test_limit is None else check_int("--test-limit", a.test_limit, low=1,
                                                              high=TEST_SIZES[dataset])
    n = limit or TRAIN_SIZES[dataset]
    dp = not a.disable_dp
    config = TrainConfig(
        epochs=check_int("--epochs", a.epochs, low=1, high=10_000),
        batch_size=check_int("--batch-size", a.batch_size, low=1, high=n),
        lr=check_number("--learning-rate", a.learning_rate, low=0, low_open=True),
        momentum=check_number("--momentum", a.momentum, low=0, high=1, high_open=True),
        dp=dp,
        noise_multiplier=None if not dp or a.noise_multiplier is None else
        check_number("--noise-multiplier", a.noise_multiplier, low=0, low_open=True),
        target_epsilon=None if not dp or a.target_epsilon is None else
        check_number("--target-epsilon", a.target_epsilon, low=0, low_open=True),
        max_grad_norm=check_number("--max-grad-norm", a.max_grad_norm, low=0, low_open=True),
        delta=check_number("--delta", a.delta, low=0, high=1, low_open=True, high_open=True),
        grad_sample_mode=check_choice("--grad-sample-mode", a.grad_sample_mode, GRAD_SAMPLE_MODES),
        device=check_choice("--device", a.device, ("auto", "cpu", "cuda")),
        seed=check_int("--seed", a.seed, low=0, high=2**31 - 1))
    if dp and (a.noise_multiplier is None) == (a.target_epsilon is None):
        raise ParameterError("give exactly one of --noise-multiplier and --target-epsilon (or --disable-dp)")
    cuda = select_device(config.device).type == "cuda"  # one line for cuda without CUDA
    world = distributed.init_from_env(cuda=cuda)
    try:
        train_set, test_set = _data(dataset, limit, test_limit, config.seed)
        model = models.mnist_cnn() if dataset != "cifar10" else models.cifar_cnn()
        result = train(model, train_set, test_set, config, progress=distributed.is_main() and sys.stderr.isatty())
        out: dict[str, Any] = dict(dataset=dataset, model="cifar_cnn" if dataset == "cifar10" else "mnist_cnn",
                                   train_size=n, test_size=len(test_set), processes=world.size if world else 1,
                                   backend=world.backend if world else None, **result.summary())
        if dp:
            out.update(sampling="Poisson", adjacency="add/remove", accountant=config.accountant)
        out["history"] = result.history.drop(columns=["dp"]).to_dict(orient="records")
        return out
    finally:
        distributed.shutdown()


def _print(out: dict[str, Any]) -> None:
    where = f"{out['processes']} process{'es' if out['processes'] > 1 else ''}" + (
        f" ({out['backend']})" if out["backend"] else "")
    print(f"{out['model']} on {out['dataset']} ({out['train_size']} examples), {where}")
    print(f"  epochs {out['epochs']}, steps {out['steps']}, batch size {out['batch_size']}, lr {out['lr']:g}")
    if out["dp"]:
        print(f"  DP-SGD: sigma {out['noise_multiplier']:.4g}, C {out['max_grad_norm']:g}, q {out['sample_rate']:.4g} "
              f"(Poisson), add/remove adjacency")
        print(f"  epsilon {out['epsilon_prv']:.4g} (PRV), {out['epsilon_rdp']:.4g} (RDP) at delta {out['delta']:g}")
    else:
        print("  non-private (no epsilon)")
    print(f"  test accuracy {out['test_accuracy']:.4f} on {out['test_size']} examples, {out['seconds']:.1f} s")


def main(a: argparse.Namespace) -> int:
    from dpnb.store import atomic_save

    out = run(a)
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 reports for the group
        return 0
    if a.out:
        text = json.dumps(out, indent=1, default=float)
        atomic_save(Path(a.out), lambda p: p.write_text(text))
    if a.json:
        print(json.dumps({k: v for k, v in out.items() if k != "history"}, default=float))
    else:
        _print(out)
    return 0


def _standalone(argv: Sequence[str] | None = None) -> int:
    """``python -m dpnb.launch ...`` (what torchrun starts): the ``dpnb train`` flags."""
    from dpnb.cli import _Parser

    p = _Parser(prog="dpnb train", description=__doc__.splitlines()[0])
    add_arguments(p)
    a = p.parse_args(argv)
    try:
        return main(a)
    except (ParameterError, Unavailable) as e:
        print(f"dpnb train: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_standalone())
