"""One training loop for private and non-private models.

``train(model, train_set, test_set, TrainConfig(dp=...))`` runs the same code with and without
differential privacy. With ``dp=True`` it wraps model, optimizer and data with Opacus's
``PrivacyEngine`` (Abadi et al. 2016's DP-SGD): **Poisson sampling** of each logical batch
(the sampling the accountants assume), per-example gradients (``hooks``, ``functorch`` or
``ghost`` clipping), clipping to ``max_grad_norm``, Gaussian noise of std
``noise_multiplier * max_grad_norm``, and logical batches larger than memory through
``BatchMemoryManager``. Either give ``noise_multiplier`` or a ``target_epsilon``: then σ is
calibrated (:func:`dpnb.privacy.calibrate_noise_multiplier`) for the planned number of steps.

Every epoch adds a row to a tidy history: loss, running train accuracy, test accuracy, ε under
the PRV and RDP accountants (computed by :mod:`dpnb.privacy` from the sample rate, σ and the
steps Opacus's own accountant recorded) and seconds.

Example::

    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> from dpnb.train import TrainConfig, train
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(512, 4, generator=g); y = (x[:, 0] > 0).long()
    >>> ds = TensorDataset(x, y)
    >>> run = train(torch.nn.Linear(4, 2), ds, ds, TrainConfig(epochs=2, batch_size=64, lr=0.5,
    ...             noise_multiplier=1.0, max_grad_norm=1.0), progress=False)
    >>> run.history[["epoch", "steps"]].values.tolist()
    [[1, 8], [2, 16]]
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from dpnb import distributed, dpsgd, privacy
from dpnb.devices import DEVICES, select_device
from dpnb.params import ParameterError, check_budget, check_choice, check_int, check_number
from dpnb.store import load_tensors, save_tensors

GRAD_SAMPLE_MODES = ("hooks", "functorch", "ghost", "bk")  # bk: book-keeping clipping (dpnb.bookkeeping)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one run; names follow Opacus and the DP-SGD literature."""

    epochs: int = 1
    batch_size: int = 256  # logical (expected, under Poisson sampling) batch size
    lr: float = 0.1
    momentum: float = 0.0
    optimizer: str = "sgd"  # "sgd" or "adam"
    dp: bool = True
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    accountant: str = "prv"  # the accountant that target_epsilon is calibrated with
    grad_sample_mode: str = "hooks"
    max_physical_batch_size: int | None = None  # None: the whole logical batch at once
    seed: int = 0
    device: str = "auto"
    eval_batch_size: int = 1024

    def validated(self, dataset_size: int) -> "TrainConfig":
        """Check every field; raise :class:`ParameterError` naming the first bad one."""
        check_int("epochs", self.epochs, low=1)
        check_int("batch_size", self.batch_size, low=1, high=dataset_size)
        check_number("lr", self.lr, low=0, low_open=True)
        check_number("momentum", self.momentum, low=0, high=1, high_open=True)
        check_choice("optimizer", self.optimizer, ("sgd", "adam"))
        check_choice("dp", self.dp, (True, False))
        check_number("max_grad_norm", self.max_grad_norm, low=0, low_open=True)
        check_number("delta", self.delta, low=0, high=1, low_open=True, high_open=True)
        check_choice("accountant", self.accountant, privacy.ACCOUNTANTS)
        check_choice("grad_sample_mode", self.grad_sample_mode, GRAD_SAMPLE_MODES)
        check_choice("device", self.device, DEVICES)
        check_int("seed", self.seed, low=0)
        check_int("eval_batch_size", self.eval_batch_size, low=1)
        if self.max_physical_batch_size is not None:
            check_int("max_physical_batch_size", self.max_physical_batch_size, low=1)
            if self.grad_sample_mode == "bk":
                raise ParameterError("max_physical_batch_size works with Opacus's modes (hooks, functorch, ghost), "
                                     "not with grad_sample_mode 'bk'")
        check_budget(dp=self.dp, noise_multiplier=self.noise_multiplier, target_epsilon=self.target_epsilon)
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ParameterError("device must be 'auto' or 'cpu' on this machine: CUDA is not available")
        return self


@dataclass
class TrainResult:
    model: nn.Module
    history: pd.DataFrame
    config: TrainConfig
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    steps: int = 0
    epsilon: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    #: the record of what ran (σ, q, steps, and the releases composed with it) that ``epsilon`` is for;
    #: None without DP
    event: privacy.SampledGaussianEvent | None = None

    @property
    def test_accuracy(self) -> float:
        return float(self.history["test_accuracy"].iloc[-1])

    def summary(self) -> dict[str, Any]:
        """One row: the final accuracy, ε (PRV and RDP), σ, q, steps and seconds of this run."""
        c = self.config
        return dict(dp=c.dp, epochs=c.epochs, batch_size=c.batch_size, max_grad_norm=c.max_grad_norm if c.dp else None,
                    lr=c.lr, target_epsilon=c.target_epsilon, noise_multiplier=self.noise_multiplier,
                    sample_rate=self.sample_rate, steps=self.steps, delta=c.delta if c.dp else None,
                    epsilon=self.epsilon.get(c.accountant), epsilon_prv=self.epsilon.get("prv"),
                    epsilon_rdp=self.epsilon.get("rdp"), test_accuracy=self.test_accuracy,
                    seconds=self.seconds)


class _BatchedTensors(Dataset):
    """A ``TensorDataset`` view whose batches are gathered with one indexing operation.

    ``DataLoader`` calls ``__getitems__`` with a batch's indices when a dataset has it; gathering
    ``x[idx]`` at once instead of stacking thousands of single rows makes large batches of cached
    features several times faster to load. Same batches, same order.
    """

    def __init__(self, ds: TensorDataset) -> None:
        self.tensors = ds.tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[i] for t in self.tensors)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return tuple(torch.index_select(t, 0, idx) for t in self.tensors)  # ~4x faster than t[idx] on CPU


def _as_batch(batch: Any) -> Any:
    return batch


def _loader(dataset: Dataset, **kw: Any) -> DataLoader:
    """``DataLoader`` with one-shot batch gathering for plain ``TensorDataset``s."""
    if type(dataset) is TensorDataset:
        return DataLoader(_BatchedTensors(dataset), collate_fn=_as_batch, **kw)
    return DataLoader(dataset, **kw)


def dp_problems(model: nn.Module) -> list[str]:
    """What stops Opacus from training ``model`` privately (e.g. BatchNorm mixes examples)."""
    from opacus.validators import ModuleValidator

    return [str(e).splitlines()[0] for e in ModuleValidator.validate(model, strict=False)]


def make_dp_compatible(model: nn.Module) -> nn.Module:
    """Replace BatchNorm by GroupNorm (Opacus's fixer) and in-place activations by copies."""
    from opacus.validators import ModuleValidator

    model = ModuleValidator.fix(model)
    for m in model.modules():
        if hasattr(m, "inplace") and isinstance(m.inplace, bool):
            m.inplace = False
    return model


def _unwrap(model: nn.Module) -> nn.Module:
    """The model itself, without Opacus's ``GradSampleModule`` or a (DP-)DDP wrapper."""
    from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP

    while True:
        if hasattr(model, "_module"):
            model = model._module
        elif isinstance(model, (DPDDP, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def save_checkpoint(model: nn.Module, path: str | Path) -> Path:
    """Save the (unwrapped) model's ``state_dict``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_tensors(_unwrap(model).state_dict(), path)


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a checkpoint saved by :func:`save_checkpoint` (``weights_only=True``: no code runs)."""
    state = load_tensors(path)
    _unwrap(model).load_state_dict(state)
    return model


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, *, batch_size: int = 1024,
             device: torch.device | None = None) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on ``dataset``."""
    device = device or next(model.parameters()).device
    model.eval()
    loss, correct, n = 0.0, 0, 0
    for x, y in _loader(dataset, batch_size=batch_size):
        x, y = x.to(device), y.to(device)
        out = model(x)
        loss += nn.functional.cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
        n += len(y)
    model.train()
    return loss / n, correct / n


def make_private(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: Any, loader: DataLoader,
                 config: TrainConfig, *, generator: torch.Generator | None = None,
                 composed_with: tuple[privacy.SampledGaussianEvent, ...] = ()) -> tuple[Any, ...]:
    """Wrap for DP-SGD with Opacus; returns (engine, model, optimizer, criterion, loader, sigma).

    The loader becomes a Poisson-sampling ``DPDataLoader`` with sample rate ``q = 1 / len(loader)``
    (the book's convention, :func:`dpnb.dpsgd.poisson_rate`). Its sampler runs ``int(1 / q)`` steps
    an epoch, which for about 8% of loader lengths is one fewer than ``len(loader)`` (floating
    point); σ is ``config.noise_multiplier`` or calibrated to ``config.target_epsilon`` for the
    steps that will actually run, at the rate actually sampled (and ``composed_with``, earlier
    releases of the same data, so that the target covers them too).
    """
    from opacus import PrivacyEngine

    sample_rate = 1 / len(loader)  # what Opacus's DPDataLoader samples at
    sigma = _noise_multiplier(config, sample_rate, composed_with)
    kw = dict(module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=sigma,
              max_grad_norm=config.max_grad_norm, poisson_sampling=True,
              grad_sample_mode=config.grad_sample_mode, noise_generator=generator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Secure RNG turned off": fine for research code
        engine = PrivacyEngine(accountant="prv")
        if config.grad_sample_mode == "ghost":
            model, optimizer, criterion, loader = engine.make_private(**kw, criterion=criterion)
        else:
            model, optimizer, loader = engine.make_private(**kw)
    return engine, model, optimizer, criterion, loader, sigma


def _noise_multiplier(config: TrainConfig, sample_rate: float,
                      composed_with: tuple[privacy.SampledGaussianEvent, ...] = ()) -> float:
    """σ as given, or calibrated to the target ε for the steps Opacus's sampler will run at ``sample_rate``
    composed with the releases ``composed_with``."""
    if config.noise_multiplier is not None:
        return float(config.noise_multiplier)
    plan = privacy.SampledGaussianEvent(None, sample_rate, config.epochs * opacus_steps_per_epoch(sample_rate),
                                        composed_with=composed_with)
    return privacy.calibrate_noise_multiplier(
        plan, target_epsilon=float(config.target_epsilon), delta=config.delta,  # type: ignore[arg-type]
        accountant=config.accountant)  # type: ignore[arg-type]


class BookKeepingStep:
    """DP-SGD with book-keeping clipping (:mod:`dpnb.bookkeeping`) on a Poisson loader of Opacus's.

    The same mechanism as :func:`make_private`'s: Opacus's ``DPDataLoader`` samples at q = 1/len(loader);
    the clipped sum comes from one backward pass; the core adds N(0, σ²C²) and divides by the expected
    batch qN (:mod:`dpnb.dpsgd`); the caller's optimizer takes the step.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, config: TrainConfig,
                 *, generator: torch.Generator | None = None,
                 composed_with: tuple[privacy.SampledGaussianEvent, ...] = ()) -> None:
        from opacus.data_loader import DPDataLoader

        from dpnb.bookkeeping import BookKeeping

        self.sample_rate = 1 / len(loader)
        self.noise_multiplier = _noise_multiplier(config, self.sample_rate, composed_with)
        self.loader = DPDataLoader.from_data_loader(loader, generator=generator)
        self.bk = BookKeeping(model)
        self.model, self.optimizer, self.config, self.generator = model, optimizer, config, generator
        self.expected_batch_size = self.sample_rate * len(loader.dataset)  # type: ignore[arg-type]
        self.steps = 0

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """One DP-SGD step on the Poisson batch (x, y); returns the batch's logits (None if empty)."""
        C = self.config.max_grad_norm
        sums, _ = self.bk.clipped_sum(x, y, max_grad_norm=C)
        std = self.noise_multiplier * C
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                p.grad = dpsgd.scale(dpsgd.add_noise(sums[name], std=std, generator=self.generator),
                                     expected_batch_size=self.expected_batch_size)
        self.optimizer.step()
        self.steps += 1
        return self.bk.last_output


def opacus_steps_per_epoch(sample_rate: float) -> int:
    """Steps an epoch of Opacus's ``UniformWithReplacementSampler`` at ``sample_rate``: ``int(1 / q)``.

        >>> opacus_steps_per_epoch(1 / 93), opacus_steps_per_epoch(1 / 94)  # 1/(1/93) = 92.999...
        (92, 94)
    """
    return int(1 / sample_rate)


def train(model: nn.Module, train_set: Dataset, test_set: Dataset | None, config: TrainConfig, *,
          progress: bool = True, epoch_callback: Any = None,
          composed_with: tuple[privacy.SampledGaussianEvent, ...] = ()) -> TrainResult:
    """Train ``model`` on ``train_set`` with or without DP; evaluate on ``test_set`` every epoch.

    ``composed_with`` are earlier releases of the training data (e.g. the noisy statistics of
    :func:`dpnb.normalization.private_standardizer` that the inputs are standardised with): a
    ``target_epsilon`` is met by the composition, and every ε reported covers them."""
    from dpnb.progress import progress as progress_bar

    n = len(train_set)  # type: ignore[arg-type]
    config = config.validated(n)
    if composed_with and not config.dp:
        raise ParameterError("composed_with needs a DP run (config.dp)")
    if config.dp and (problems := dp_problems(model)):
        raise ParameterError("model is not DP-compatible: " + "; ".join(problems)
                             + " (use dpnb.train.make_dp_compatible, which swaps BatchNorm for GroupNorm)")
    torch.manual_seed(config.seed)
    device = select_device(config.device)
    world = distributed.world()
    if world is not None and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    model = model.to(device)
    generator = torch.Generator().manual_seed(config.seed)
    loader = _loader(train_set, batch_size=config.batch_size, shuffle=True, generator=generator)
    if world is not None:
        model, loader = _distribute(model, train_set, config, world)
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum)
    else:
        optimizer = torch.optim.Adam(params, lr=config.lr)
    criterion: Any = nn.CrossEntropyLoss()
    engine, sigma, sample_rate, bk = None, None, None, None
    if config.dp and config.grad_sample_mode == "bk":
        from dpnb.bookkeeping import unsupported

        if problems := unsupported(model):
            print(f"grad_sample_mode 'bk' cannot handle {problems[0]}; using Opacus's ghost clipping instead")
            config = replace(config, grad_sample_mode="ghost")
        else:
            bk = BookKeepingStep(model, optimizer, loader, config, generator=generator, composed_with=composed_with)
            loader, sigma, sample_rate = bk.loader, bk.noise_multiplier, bk.sample_rate
    if config.dp and bk is None:
        engine, model, optimizer, criterion, loader, sigma = make_private(
            model, optimizer, criterion, loader, config, generator=generator, composed_with=composed_with)
        sample_rate = float(loader.sample_rate)  # the sampler's rate (Opacus's accountant gets 1/len(loader))

    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    steps = 0
    epochs = progress_bar(range(1, config.epochs + 1), desc="epochs", enable=progress)
    for epoch in epochs:
        t0 = time.perf_counter()
        model.train()
        tot_loss, correct, seen = 0.0, 0, 0
        if engine is not None and config.max_physical_batch_size:
            from opacus.utils.batch_memory_manager import BatchMemoryManager

            ctx: Any = BatchMemoryManager(data_loader=loader, max_physical_batch_size=config.max_physical_batch_size,
                                          optimizer=optimizer)
        else:
            ctx = contextlib.nullcontext(loader)
        with ctx as batches, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for x, y in progress_bar(batches, desc=f"epoch {epoch}", leave=False, enable=progress):
                # Poisson sampling can draw an empty batch: it is still a step of the
                # mechanism (Opacus adds noise and the accountant counts it), so no skipping.
                x, y = x.to(device), y.to(device)
                optimizer.zero_grad(set_to_none=True)
                if bk is not None:  # book-keeping clipping: no Opacus wrapper
                    out = bk.step(x, y)
                    if out is not None and len(y):
                        tot_loss += float(nn.functional.cross_entropy(out, y, reduction="sum"))
                        correct += int((out.argmax(1) == y).sum())
                        seen += len(y)
                    continue
                if engine is not None and not len(y) and config.grad_sample_mode == "functorch":
                    _empty_step(model, optimizer)  # functorch cannot run an empty batch
                    continue
                out = model(x)
                loss = criterion(out, y)
                loss.backward()
                optimizer.step()
                if len(y):
                    tot_loss += float(loss.detach()) * len(y)
                    correct += int((out.argmax(1) == y).sum())
                    seen += len(y)
        if engine is not None:
            steps = sum(h[2] for h in engine.accountant.history)
        elif bk is not None:
            steps = bk.steps
        else:
            steps += len(loader)
            if hasattr(loader.sampler, "set_epoch"):  # DistributedSampler: a new order next epoch
                loader.sampler.set_epoch(epoch)
        row: dict[str, Any] = dict(epoch=epoch, steps=steps, loss=tot_loss / max(seen, 1),
                                   train_accuracy=correct / max(seen, 1))
        if test_set is not None:
            row["test_loss"], row["test_accuracy"] = evaluate(model, test_set, batch_size=config.eval_batch_size,
                                                              device=device)
        if engine is not None or bk is not None:
            row.update(dpsgd.epsilons(privacy.SampledGaussianEvent(sigma, sample_rate, steps,  # type: ignore[arg-type]
                                                                   composed_with=composed_with), delta=config.delta))
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        epochs.set_postfix({k: round(v, 3) for k, v in row.items() if k in ("loss", "test_accuracy", "epsilon_prv")})
        if epoch_callback is not None:
            epoch_callback(row)
    history = pd.DataFrame(rows)
    history["dp"] = config.dp
    history["noise_multiplier"] = sigma
    history["sample_rate"] = sample_rate
    history["delta"] = config.delta if config.dp else None
    eps = {k.removeprefix("epsilon_"): float(rows[-1][k]) for k in rows[-1] if k.startswith("epsilon_")}
    event = (privacy.SampledGaussianEvent(sigma, sample_rate, steps, composed_with=composed_with)  # type: ignore[arg-type]
             if eps else None)
    return TrainResult(model=model, history=history, config=config, noise_multiplier=sigma,
                       sample_rate=sample_rate, steps=steps, epsilon=eps, seconds=time.perf_counter() - t_start,
                       event=event)


#: Under torchrun each process should expect about this many examples a step or more, so that no
#: process draws an empty local batch (probability about e^-32 a step): Opacus's distributed sampler
#: skips an empty batch, and the processes would fall out of step.
MIN_LOCAL_BATCH = 32


def _distribute(model: nn.Module, train_set: Dataset, config: TrainConfig, world: distributed.World
                ) -> tuple[nn.Module, DataLoader]:
    """Wrap for one of ``world.size`` processes (torchrun).

    DP: Opacus's ``DPDDP`` (rank 0's weights broadcast to all); ``make_private`` then gives a
    ``DistributedUniformWithReplacementSampler``: each process Poisson-samples its shard of the data
    at the single-process rate q = 1/⌈N/B⌉, so every example joins a step's global batch independently
    with probability q and the global run is the single-process mechanism; the noise is added once (rank
    0) and the sums are averaged. Each process draws its masks from its own seed. Non-private: DDP
    with a ``DistributedSampler`` and B/size examples per process."""
    from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP
    from torch.utils.data import DistributedSampler

    if config.dp:
        if config.grad_sample_mode == "bk":
            raise ParameterError("grad_sample_mode 'bk' runs in one process; under torchrun use hooks, functorch "
                                 "or ghost")
        if config.batch_size < MIN_LOCAL_BATCH * world.size:
            raise ParameterError(f"batch_size must be at least {MIN_LOCAL_BATCH * world.size} with {world.size} "
                                 f"processes (each process should expect {MIN_LOCAL_BATCH} examples a step or more); "
                                 f"got {config.batch_size}")
        model = DPDDP(model)
        torch.manual_seed(config.seed + 1_000_003 * world.rank)  # independent Poisson masks per process
        return model, _loader(train_set, batch_size=config.batch_size, shuffle=True)
    model = nn.parallel.DistributedDataParallel(model)
    sampler = DistributedSampler(train_set, num_replicas=world.size, rank=world.rank, shuffle=True,  # type: ignore[arg-type]
                                 seed=config.seed)
    return model, _loader(train_set, batch_size=max(1, config.batch_size // world.size), sampler=sampler)


def _empty_step(model: nn.Module, optimizer: Any) -> None:
    """A step of DP-SGD on an empty Poisson batch: no per-example gradients, the noise alone.

    Opacus's optimizer clips an empty ``grad_sample`` to a zero sum and adds the noise; hooks and
    ghost clipping get there through an empty forward pass, ``functorch`` needs it set by hand.
    """
    for p in model.parameters():
        if p.requires_grad:
            p.grad_sample = p.new_zeros((0, *p.shape))
    optimizer.step()
