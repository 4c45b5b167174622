"""DP-SGD at scale: augmentation multiplicity, parameter averaging, weight standardisation.

De et al. (2022, "Unlocking high-accuracy differentially private image classification through
scale", Sec. 3) combine, on top of large batches:

* **augmentation multiplicity** (Sec. 3.1): each example is augmented ``K`` times and its
  gradient is the *average over its K views*, clipped once; one example still contributes
  one clipped gradient of norm at most ``C``, so the privacy analysis (sampling rate, steps,
  σ) is exactly that of plain DP-SGD (:func:`clipped_gradient_sum`);
* **parameter averaging** (Sec. 3.3): an exponential moving average of the iterates, which is
  post-processing and costs no privacy (:class:`EMA`);
* **weight standardisation** (Qiao et al. 2019) of every convolution, with GroupNorm, in place of
  BatchNorm (:class:`WSConv2d`);
* σ calibrated so that the planned steps end exactly at the target ε.

:func:`train_augmult` implements the first two: the DP-SGD core's Poisson sampling and record of
what ran (:mod:`dpnb.dpsgd`), per-view gradients from Opacus's hooks averaged per example
(:func:`per_example_view_gradients`), then the clipping, noise and scaling stages of Opacus's
``DPOptimizer``, which thus clips each example once rather than each view.

Example::

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    >>> x, y = torch.rand(3, 5, 1, 2, 2), torch.tensor([0, 1, 1])  # 3 examples x 5 views
    >>> total, norms = clipped_gradient_sum(model, x, y, max_grad_norm=0.1)
    >>> bool((norms > 0).all()), sorted(total) == ["1.bias", "1.weight"]
    (True, True)
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from dpnb import dpsgd
from dpnb.layers import EMA, WSConv2d, standardize_weights  # noqa: F401  (this chapter's techniques)
from dpnb.params import check_int


def augment(x: torch.Tensor, *, multiplicity: int, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """``multiplicity`` random views of each image (reflect-pad + random crop, random horizontal flip):
    ``(B, C, H, W) -> (B, K, C, H, W)``. ``multiplicity=0`` returns the images themselves as one view."""
    if multiplicity == 0:
        return x[:, None]
    B, C, H, W = x.shape
    if B == 0:  # an empty Poisson batch
        return x.new_zeros((0, multiplicity, C, H, W))
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    views = []
    for _ in range(multiplicity):
        dx = torch.randint(0, 2 * pad + 1, (B,), generator=generator)
        dy = torch.randint(0, 2 * pad + 1, (B,), generator=generator)
        flip = torch.rand(B, generator=generator) < 0.5
        rows = (dy[:, None] + torch.arange(H))[:, :, None].expand(B, H, W)
        cols = (dx[:, None] + torch.arange(W))[:, None, :].expand(B, H, W)
        cols = torch.where(flip[:, None, None], cols.flip(-1), cols)
        idx = (rows * padded.shape[-1] + cols).reshape(B, 1, H * W).expand(B, C, H * W)
        views.append(padded.reshape(B, C, -1).gather(2, idx).reshape(B, C, H, W))
    return torch.stack(views, dim=1)


def per_example_view_gradients(wrapped: Any, x: torch.Tensor, y: torch.Tensor) -> None:
    """Set each parameter's ``grad_sample`` to the per-*example* gradient of the mean loss over its views.

    ``x`` is ``(B, K, ...)``, ``wrapped`` an Opacus ``GradSampleModule`` (``loss_reduction="sum"``):
    Opacus's hooks give the ``B*K`` per-row gradients, which are summed over each example's K
    rows of ``loss / K`` (De et al. 2022, Sec. 3.1). Clipping then treats each example as one
    row, so it moves the clipped sum by at most C whatever K is. An empty batch gives
    ``grad_sample`` of shape ``(0, *p.shape)``, which Opacus's optimizer clips to nothing.
    """
    inner = wrapped._module
    params = [p for p in inner.parameters() if p.requires_grad]
    for p in params:  # a previous chunk's rows, already clipped and accumulated (else Opacus appends)
        p.grad_sample = None
    B, K = x.shape[:2]
    if B == 0:  # an empty Poisson batch is still a step: no forward pass, the noise alone
        for p in params:
            p.grad_sample = p.new_zeros((0, *p.shape))
        return
    out = wrapped(x.flatten(0, 1))
    loss = F.cross_entropy(out, y.repeat_interleave(K), reduction="sum") / K  # mean over views
    with warnings.catch_warnings():  # "full backward hook ... no inputs require gradients": expected
        warnings.simplefilter("ignore", UserWarning)
        loss.backward()
    for p in params:
        p.grad_sample = p.grad_sample.reshape(B, K, *p.shape).sum(1)
        p.grad = None


def clipped_gradient_sum(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, max_grad_norm: float,
                         chunk_size: int | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Sum over examples of each example's clipped gradient, and the per-example norms before clipping.

    ``x`` is ``(B, K, ...)``: example ``i``'s gradient is that of the mean loss over its ``K`` views
    (:func:`per_example_view_gradients`), clipped to ``max_grad_norm`` by the core's stage 2
    (:func:`dpnb.dpsgd.clip_and_sum`). ``chunk_size`` examples are processed at a time. This is
    what :func:`train_augmult`'s optimizer computes, exposed for tests and figures.
    """
    from opacus import GradSampleModule

    wrapped = model if isinstance(model, GradSampleModule) else GradSampleModule(model, loss_reduction="sum")
    params = [(k, p) for k, p in wrapped._module.named_parameters() if p.requires_grad]
    total = {k: torch.zeros_like(p) for k, p in params}
    B = x.shape[0]
    norms = []
    for start in range(0, B, chunk_size or max(B, 1)):
        stop = start + (chunk_size or B)
        per_example_view_gradients(wrapped, x[start:stop], y[start:stop])
        sums, n = dpsgd.clip_and_sum({k: p.grad_sample for k, p in params}, max_grad_norm=max_grad_norm)
        for k, v in sums.items():
            total[k] += v
        for _, p in params:
            p.grad_sample = None
        norms.append(n.detach())
    if wrapped is not model:
        wrapped._close()
    return total, torch.cat(norms) if norms else torch.zeros(0)


def train_augmult(model: nn.Module, train_set: TensorDataset, test_set: TensorDataset | None, *,
                  epochs: int | None = None, steps: int | None = None, batch_size: int, lr: float,
                  max_grad_norm: float, delta: float, momentum: float = 0.9,
                  noise_multiplier: float | None = None, target_epsilon: float | None = None,
                  multiplicity: int = 0, ema_decay: float | None = None, ema_warmup: bool = True, seed: int = 0,
                  device: torch.device | str = "cpu", chunk_size: int | None = 256,
                  progress: bool = True) -> dict[str, Any]:
    """DP-SGD with Poisson sampling, augmentation multiplicity and optional EMA, on Opacus's optimizer.

    Sampling, σ (``noise_multiplier``, or calibrated by PRV so that the run ends at
    ``target_epsilon``) and the step count (``epochs`` epochs, or ``steps`` updates as De et al.'s
    configs state them; the history then has one row per pass of ``ceil(N / batch_size)`` steps,
    the last one possibly shorter) are the DP-SGD core's (:class:`dpnb.dpsgd.DPSGD`:
    rate ``1/ceil(N / batch_size)``); the per-example gradient averages the K views
    (:func:`per_example_view_gradients`), and clipping, noise and scaling are the stages of
    Opacus's ``DPOptimizer`` (``clip_and_accumulate`` per chunk of ``chunk_size`` examples, then
    ``add_noise`` and ``scale_grad`` by the expected batch size). Returns a summary row (accuracy
    of the EMA model, with the warm-up of :class:`EMA` unless ``ema_warmup=False``, when
    ``ema_decay`` is set) with ε by PRV and RDP, and the per-epoch history. The trained iterate
    itself is ``raw_model`` with its accuracy ``test_accuracy_raw``: the average does not feed back
    into training, so one run gives the result with and without EMA.
    """
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    from dpnb.progress import progress as progress_bar
    from dpnb.train import evaluate

    x_all, y_all = train_set.tensors
    n = len(y_all)
    batch_size = check_int("batch_size", batch_size, low=1, high=n)
    multiplicity = check_int("multiplicity", multiplicity, low=0)
    device = torch.device(device)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)  # sampling and augmentation
    core = dpsgd.DPSGD(dataset_size=n, batch_size=batch_size, epochs=epochs, steps=steps, max_grad_norm=max_grad_norm,
                       noise_multiplier=noise_multiplier, target_epsilon=target_epsilon, delta=delta,
                       accountant="prv", generator=g)
    model = model.to(device).train()
    wrapped = GradSampleModule(model, loss_reduction="sum")
    opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum),
                      noise_multiplier=core.noise_multiplier, max_grad_norm=max_grad_norm,
                      expected_batch_size=core.expected_batch_size, loss_reduction="mean",  # type: ignore[arg-type]
                      generator=torch.Generator(device=device).manual_seed(seed + 1))
    ema = EMA(model, decay=ema_decay, warmup=ema_warmup) if ema_decay else None
    rows, t0 = [], time.perf_counter()
    passes = -(-core.planned_steps // core.steps_per_epoch)
    for epoch in progress_bar(range(1, passes + 1), desc="epochs", enable=progress):
        te = time.perf_counter()
        for _ in range(min(core.steps_per_epoch, core.planned_steps - core.steps)):
            idx = core.sample()                                            # 1. Poisson sampling
            xb = augment(x_all[idx], multiplicity=multiplicity, generator=g).to(device)
            yb = y_all[idx].to(device)
            step = chunk_size or max(len(idx), 1)
            for start in range(0, max(len(idx), 1), step):                 # 2. clip and sum, by chunks
                per_example_view_gradients(wrapped, xb[start:start + step], yb[start:start + step])
                opt.clip_and_accumulate()
            opt.add_noise()                                                # 3. noise
            opt.scale_grad()                                               # 4. / expected batch size
            opt.original_optimizer.step()
            opt.zero_grad(set_to_none=True)
            core.record_step()
            if ema is not None:
                ema.update(model)
        evaluated = ema.average if ema is not None else model
        row: dict[str, Any] = dict(epoch=epoch, steps=core.steps, seconds=time.perf_counter() - te)
        if test_set is not None:
            row["test_loss"], row["test_accuracy"] = evaluate(evaluated, test_set, device=device)
        rows.append(row)
    wrapped._close()
    eps = core.epsilons()
    history = pd.DataFrame(rows)
    raw_accuracy = None
    if test_set is not None:
        raw_accuracy = (evaluate(model, test_set, device=device)[1] if ema is not None
                        else float(history["test_accuracy"].iloc[-1]))
    return dict(model=ema.average if ema is not None else model, raw_model=model, history=history,
                test_accuracy_raw=raw_accuracy, multiplicity=multiplicity,
                ema_decay=ema_decay, ema_warmup=ema_warmup if ema_decay else None,
                noise_multiplier=core.noise_multiplier, sample_rate=core.sample_rate, steps=core.steps, delta=delta,
                epsilon_prv=eps["epsilon_prv"], epsilon_rdp=eps["epsilon_rdp"],
                test_accuracy=float(history["test_accuracy"].iloc[-1]) if test_set is not None else None,
                seconds=time.perf_counter() - t0)


#: One run of :func:`compare_techniques`: augmentation multiplicity, weight standardisation and how
#: many times the planned steps it trains (equal compute); EMA is read off the same run.
RunKey = tuple[int, bool, int]


def technique_variants(multiplicity: int, *, equal_compute: bool) -> list[dict[str, Any]]:
    """The scale section's variants: plain DP-SGD, each technique alone, all three together, and
    (``equal_compute``) plain DP-SGD given ``multiplicity`` times the steps, which is the gradient
    work that K views cost. ``run`` names the training run a variant reads (:data:`RunKey`),
    ``ema`` whether it reads the run's average.

        >>> [v["name"] for v in technique_variants(4, equal_compute=True)]
        ['plain DP-SGD', 'EMA', 'weight standardisation', 'K = 4', 'K = 4 + EMA + WS', 'plain DP-SGD, 4x steps']
        >>> technique_variants(0, equal_compute=True)[-1]["name"]
        'weight standardisation'
    """
    k = check_int("multiplicity", multiplicity, low=0)
    out = [dict(name="plain DP-SGD", run=(0, False, 1), ema=False), dict(name="EMA", run=(0, False, 1), ema=True),
           dict(name="weight standardisation", run=(0, True, 1), ema=False)]
    if k:
        out += [dict(name=f"K = {k}", run=(k, False, 1), ema=False),
                dict(name=f"K = {k} + EMA + WS", run=(k, True, 1), ema=True)]
        if equal_compute and k > 1:
            out.append(dict(name=f"plain DP-SGD, {k}x steps", run=(0, False, k), ema=False))
    return out


def compare_techniques(make_model: Any, train_set: TensorDataset, validation_set: TensorDataset,
                       test_set: TensorDataset, *, variants: list[dict[str, Any]], learning_rates: list[float],
                       steps: int, ema_decay: float, progress: bool = True, **run: Any) -> tuple[pd.DataFrame,
                                                                                                pd.DataFrame]:
    """Each variant of :func:`technique_variants` tuned on validation data, then tested once.

    Every training run (:data:`RunKey` × learning rate) is one :func:`train_augmult` call of
    ``steps`` (× the key's factor) updates with the EMA tracked beside the iterate, scored on
    ``validation_set``. Each variant takes the learning rate with the best validation accuracy
    (its own metric: the iterate, or the EMA), and only that model is evaluated on ``test_set``.
    ``make_model(ws)`` returns a fresh, seeded model; ``run`` goes to :func:`train_augmult`
    (batch size, C, δ, σ or target ε, momentum, seed, device). Returns the search (one row per
    variant and learning rate, validation accuracy) and the chosen rows (test accuracy, ε).
    Privacy: every run spends the same ε; the search itself is not counted in it.
    """
    from dpnb.progress import progress as progress_bar
    from dpnb.train import evaluate

    keys = list(dict.fromkeys(v["run"] for v in variants))
    runs: dict[tuple[RunKey, float], dict[str, Any]] = {}
    for key, lr in progress_bar([(k, lr) for k in keys for lr in learning_rates], desc="scale runs", enable=progress):
        k, ws, factor = key
        runs[key, lr] = train_augmult(make_model(ws), train_set, validation_set, steps=steps * factor, lr=lr,
                                      multiplicity=k, ema_decay=ema_decay, progress=False, **run)
    search, chosen = [], []
    for v in variants:
        metric = "test_accuracy" if v["ema"] else "test_accuracy_raw"
        scores = {lr: runs[v["run"], lr][metric] for lr in learning_rates}
        search += [dict(variant=v["name"], lr=lr, validation_accuracy=acc) for lr, acc in scores.items()]
        lr = max(scores, key=lambda x: scores[x])
        r = runs[v["run"], lr]
        model = r["model"] if v["ema"] else r["raw_model"]
        chosen.append(dict(variant=v["name"], lr=lr, multiplicity=v["run"][0], ws=v["run"][1], ema=v["ema"],
                           steps=r["steps"], noise_multiplier=r["noise_multiplier"], epsilon_prv=r["epsilon_prv"],
                           epsilon_rdp=r["epsilon_rdp"], validation_accuracy=scores[lr],
                           test_accuracy=evaluate(model, test_set, device=run.get("device", "cpu"))[1],
                           seconds=r["seconds"]))
    return pd.DataFrame(search), pd.DataFrame(chosen)


def preactivation_stats(model: nn.Module, x: torch.Tensor, *, saturation: float = 2.0) -> dict[str, float]:
    """What the activations of ``model`` receive on the batch ``x`` (no gradient, ``model`` unchanged):
    the standard deviation of every Tanh/ReLU/SELU input pooled together, and the fraction whose
    magnitude exceeds ``saturation`` (for tanh, whose slope at 2 is 0.07, the saturated units).

    Weight standardisation rescales each filter to unit variance without a 1/√fan-in gain, on the
    assumption that a normalisation layer follows the convolution; placed *before* the
    normalisation, an activation sees the unnormalised output instead.

        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(16, 3, 8, 8)
        >>> before = preactivation_stats(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Tanh(), nn.GroupNorm(2, 8)), x)
        >>> _ = torch.manual_seed(0)
        >>> ws = standardize_weights(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Tanh(), nn.GroupNorm(2, 8)))
        >>> after = preactivation_stats(ws, x)
        >>> after["std"] > 3 * before["std"], after["saturated"] > before["saturated"]
        (True, True)
    """
    inputs: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, i, _o: inputs.append(i[0].detach().flatten()))
             for m in model.modules() if isinstance(m, (nn.Tanh, nn.ReLU, nn.SELU))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    if not inputs:
        raise ValueError("the model has no Tanh, ReLU or SELU activation")
    a = torch.cat(inputs)
    return dict(std=float(a.std()), saturated=float((a.abs() > saturation).float().mean()))
