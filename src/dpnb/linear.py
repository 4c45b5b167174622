"""Exact DP-SGD for a linear softmax classifier, without materialising per-example gradients.

For logits ``z = W x + b`` and the cross-entropy loss, example ``i``'s gradient is the rank-one
matrix ``g_i = delta_i [x_i; 1]^T`` with ``delta_i = softmax(z_i) - onehot(y_i)``, so its
Frobenius norm is ``||delta_i|| * sqrt(||x_i||^2 + 1)`` (Goodfellow 2015, "Efficient per-example
gradient computations", Sec. 2). Clipping then only rescales ``delta_i``: the clipped sum is one
matrix product, ``(c * delta)^T [x, 1]``, with ``c_i = min(1, C / ||g_i||)``. This is the same
mechanism as Opacus's DP-SGD (Abadi et al. 2016, Alg. 1): Poisson sampling with rate
``q = 1 / ceil(N / B)``, clipping to ``max_grad_norm``, Gaussian noise of std
``noise_multiplier * max_grad_norm`` on the sum, division by the expected batch size ``q N``,
then SGD with momentum: the stages of :class:`dpnb.dpsgd.DPSGD`, with the clipped sum of stage 2 in
closed form; ε comes from the core's record of what ran. It is
several times faster on a CPU than per-example gradients for the 15,552 ScatterNet features
of Tramèr & Boneh (ICLR 2021, Sec. 3), where the linear model is trained for 60 epochs.

Example::

    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> from dpnb.train import TrainConfig
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(2000, 5, generator=g); y = (x[:, 0] > 0).long()
    >>> run = train_linear(TensorDataset(x, y), TensorDataset(x, y), TrainConfig(
    ...     epochs=3, batch_size=200, lr=1.0, momentum=0.9, target_epsilon=2.0, max_grad_norm=1.0),
    ...     num_classes=2, progress=False)
    >>> run.steps, round(run.epsilon["prv"], 2), run.test_accuracy > 0.9
    (30, 2.0, True)
"""

from __future__ import annotations

import math
import time
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dpnb.devices import select_device
from dpnb.dpsgd import DPSGD, clip_factors
from dpnb.layers import EMA
from dpnb.params import ParameterError, check_int
from dpnb.privacy import SampledGaussianEvent
from dpnb.train import TrainConfig, TrainResult

#: Bytes of features per chunk of a DP batch on a CPU (a few MiB: the chunk stays in cache while it is used)
CHUNK_BYTES = 8 * 2**20


def input_gram(inputs: torch.Tensor, *, chunk: int = 4096) -> torch.Tensor:
    """``x_ik . x_il + 1`` for every example ``i`` and views ``k, l``: ``(N, K, K)`` from ``(N, K, d)``
    (``(N, 1, 1)`` from ``(N, d)``), in chunks of ``chunk`` examples so that no input-sized temporary
    is made. It depends on the inputs only, so a training run computes it once
    (:func:`per_example_grad_norms`).

        >>> input_gram(torch.ones(2, 3)).flatten().tolist()
        [4.0, 4.0]
    """
    x = inputs if inputs.ndim == 3 else inputs[:, None]
    if not len(x):
        return x.new_zeros(0, x.shape[1], x.shape[1])
    return torch.cat([c @ c.transpose(1, 2) + 1 for c in x.split(chunk)])


def per_example_grad_norms(*, inputs: torch.Tensor, logit_grads: torch.Tensor,
                           gram: torch.Tensor | None = None) -> torch.Tensor:
    """Norm of each example's gradient with respect to ``(W, b)``.

    One view per example, ``(B, d)`` and ``(B, classes)``: ``||delta_i|| * sqrt(||x_i||^2 + 1)``
    (Goodfellow 2015, Sec. 2). ``K`` views per example, ``(B, K, d)`` and ``(B, K, classes)``, whose
    gradient is the mean over the views (augmentation multiplicity, De et al. 2022, Sec. 3.1):
    ``sqrt(sum_{k,l} (delta_ik . delta_il) (x_ik . x_il + 1)) / K``. ``gram`` is the batch's
    :func:`input_gram`, when already known (then ``inputs`` is not read).
    """
    if gram is None:
        gram = input_gram(inputs)
    if inputs.ndim == 2:
        return logit_grads.norm(dim=1) * gram.reshape(-1).sqrt()
    products = (logit_grads @ logit_grads.transpose(1, 2)) * gram
    return products.sum((1, 2)).clamp(min=0).sqrt() / inputs.shape[1]


def clipped_gradient_sum(model: nn.Linear, inputs: torch.Tensor, targets: torch.Tensor, *,
                         max_grad_norm: float, gram: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum of clipped per-example gradients for ``W``, for ``b``, the logits) of a batch.

    ``inputs`` is ``(B, d)``, or ``(B, K, d)`` for ``K`` views of each example: then an example's
    gradient is the mean over its views, clipped once, so it still adds at most ``C`` to the
    sum. Each example's gradient is scaled by ``min(1, C / ||g_i||)`` (Abadi et al. 2016, Alg. 1).
    ``gram``: the batch's :func:`input_gram`, when already known.
    """
    with torch.no_grad():
        x = inputs if inputs.ndim == 3 else inputs[:, None]
        logits = model(x)                                              # (B, K, classes)
        delta = torch.softmax(logits, dim=-1)
        delta[torch.arange(len(targets), device=delta.device), :, targets] -= 1
        norms = per_example_grad_norms(inputs=x, logit_grads=delta, gram=gram)
        scale = clip_factors(norms, max_grad_norm=max_grad_norm) / x.shape[1]
        delta = (delta * scale[:, None, None]).flatten(0, 1)
        return delta.T @ x.flatten(0, 1), delta.sum(0), logits if inputs.ndim == 3 else logits[:, 0]


@torch.no_grad()
def _accuracy(models: list[nn.Linear], x: torch.Tensor, y: torch.Tensor, batch_size: int = 8192
              ) -> list[tuple[float, float]]:
    """(cross-entropy, accuracy) of each of ``models`` (same shapes) in one pass over the features (their
    weights stacked: each batch is read from memory once); for ``(N, K, d)`` inputs of the mean of the K
    views' probabilities."""
    w = torch.cat([m.weight for m in models])
    b = torch.cat([m.bias for m in models])
    classes = models[0].out_features
    loss, correct = [0.0] * len(models), [0] * len(models)
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        logits = nn.functional.linear(xb, w, b)
        for j in range(len(models)):
            probs = torch.softmax(logits[..., j * classes:(j + 1) * classes], dim=-1)
            if probs.ndim == 3:
                probs = probs.mean(1)
            loss[j] += float(nn.functional.nll_loss(probs.clamp(min=1e-12).log(), yb, reduction="sum"))
            correct[j] += int((probs.argmax(1) == yb).sum())
    return [(lo / len(y), c / len(y)) for lo, c in zip(loss, correct)]


def _flat(ds: TensorDataset, device: torch.device, views: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features as ``(N, d)``, or ``(N, views, d)`` when ``views > 1``."""
    x, y = ds.tensors[0], ds.tensors[1]
    shape = (len(x), -1) if views == 1 else (len(x), views, -1)
    return x.reshape(shape).to(device, torch.float32), y.to(device, torch.long)


def train_linear(train_set: TensorDataset, test_set: TensorDataset | None, config: TrainConfig, *,
                 num_classes: int, views: int = 1, test_views: int = 1,
                 composed_with: tuple[SampledGaussianEvent, ...] = (), ema_decay: float | None = None,
                 epsilon_every: int | None = 1, progress: bool = True) -> TrainResult:
    """DP-SGD (``config.dp``) or plain SGD for ``nn.Linear`` on flattened tensors; same result type as
    :func:`dpnb.train.train`.

    Uses ``epochs``, ``batch_size`` (expected size under Poisson sampling), ``lr``, ``momentum``,
    ``max_grad_norm``, ``noise_multiplier`` or ``target_epsilon`` (calibrated with
    ``accountant``), ``delta``, ``seed`` and ``device`` of ``config``; ``optimizer`` must be ``sgd``.
    With ``views=K`` the training features are ``(N, K, ...)``: K augmented views of each example,
    whose gradients are averaged before the one clipping (:func:`clipped_gradient_sum`); the
    sampling rate, steps and σ, hence ε, do not depend on K. With ``test_views=K`` the test
    features are ``(N, K, ...)`` too and predictions average the views' probabilities
    (test-time augmentation: post-processing, no privacy cost). ``composed_with`` are earlier
    releases of the training data (e.g. the noisy statistics of
    :func:`dpnb.normalization.private_standardizer`): σ is calibrated so that ε covers them too.
    With ``ema_decay``, an exponential moving average of the iterates (:class:`dpnb.layers.EMA`,
    with its warm-up; post-processing, no privacy cost) is evaluated and returned as the model;
    the history's ``test_accuracy_raw`` is the last iterate's. The history has ε after every
    ``epsilon_every`` epochs and after the last (None: the last only; NaN in the other rows): a PRV
    ε costs about as much as an epoch of the ScatterNet model, and a 60-epoch run needs only its last.
    """
    from dpnb.progress import progress as progress_bar

    if not isinstance(train_set, TensorDataset) or (test_set is not None and not isinstance(test_set, TensorDataset)):
        raise ParameterError("train_set and test_set must be TensorDatasets of (features, labels)")
    n = len(train_set)
    config = config.validated(n)
    views, test_views = check_int("views", views, low=1), check_int("test_views", test_views, low=1)
    if epsilon_every is not None:
        check_int("epsilon_every", epsilon_every, low=1)
    if config.optimizer != "sgd":
        raise ParameterError(f"optimizer must be 'sgd' for train_linear, got {config.optimizer!r}")
    device = select_device(config.device)
    x, y = _flat(train_set, device, views)
    xt, yt = _flat(test_set, device, test_views) if test_set is not None else (None, None)
    if xt is not None and xt.shape[-1] != x.shape[-1]:
        raise ParameterError(f"test features have {xt.shape[-1]} values per view, training features "
                             f"{x.shape[-1]}: check views and test_views")
    num_classes = check_int("num_classes", num_classes, low=2)  # public metadata, never read off the labels
    torch.manual_seed(config.seed)
    model = nn.Linear(x.shape[-1], num_classes).to(device)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    ema = EMA(model, decay=ema_decay, warmup=True) if ema_decay is not None else None
    evaluated = ema.average if ema is not None else model
    generator = torch.Generator(device=device).manual_seed(config.seed)
    core = None
    if config.dp:  # sampling rate, sigma and step count: the DP-SGD core's
        core = DPSGD(dataset_size=n, batch_size=config.batch_size, epochs=config.epochs,
                     max_grad_norm=config.max_grad_norm, noise_multiplier=config.noise_multiplier,
                     target_epsilon=config.target_epsilon, delta=config.delta, accountant=config.accountant,
                     generator=generator, device=device, composed_with=composed_with)
    elif composed_with:
        raise ParameterError("composed_with needs a DP run (config.dp)")
    steps_per_epoch = core.steps_per_epoch if core is not None else math.ceil(n / config.batch_size)
    sigma = core.noise_multiplier if core is not None else None
    sample_rate = core.sample_rate if core is not None else None
    rows: list[dict[str, Any]] = []
    t_start, steps = time.perf_counter(), 0
    # A DP batch is processed in chunks of about CHUNK_BYTES on a CPU: each chunk is gathered, its logits,
    # norms and clipped sum formed while it is still in cache, so the batch is read from memory once, not
    # three times (gather, logits, sum). Plain SGD gathers the whole batch into one reused buffer.
    row_bytes = x[0].numel() * x.element_size()
    cap = (max(1, CHUNK_BYTES // max(row_bytes, 1)) if device.type == "cpu" else n) if config.dp else config.batch_size
    buffer = torch.empty((min(cap, n), *x.shape[1:]), dtype=x.dtype, device=device) if device.type == "cpu" else None
    grams = input_gram(x) if core is not None else None  # the norms' input part, once: one pass less per step
    for epoch in progress_bar(range(1, config.epochs + 1), desc="epochs", enable=progress):
        t0 = time.perf_counter()
        tot_loss, correct, seen = 0.0, 0, 0
        order = None if config.dp else torch.randperm(n, generator=generator, device=device)
        for s in range(steps_per_epoch):
            if core is not None:  # stage 1: Poisson sampling
                idx = core.sample()
            else:
                idx = order[s * config.batch_size:(s + 1) * config.batch_size]  # type: ignore[index]
            yb = y[idx]
            if core is not None:  # stage 2 in closed form, chunk by chunk, then the core's noise and scale
                gw, gb = torch.zeros_like(model.weight), torch.zeros_like(model.bias)
                parts = []
                for part in idx.split(cap):
                    xb = torch.index_select(x, 0, part, out=buffer[:len(part)]) if buffer is not None else x[part]
                    w, b, lg = clipped_gradient_sum(model, xb, y[part], max_grad_norm=config.max_grad_norm,
                                                    gram=grams[part])  # type: ignore[index]
                    gw += w
                    gb += b
                    parts.append(lg)
                logits = torch.cat(parts) if parts else model(x[:0])
                noisy = core.privatize({"weight": gw, "bias": gb})
                model.weight.grad, model.bias.grad = noisy["weight"], noisy["bias"]
            else:
                # gather into one reused buffer: a fresh multi-GB batch each step costs more in page faults
                xb = torch.index_select(x, 0, idx, out=buffer[:len(idx)]) if buffer is not None else x[idx]
                optimizer.zero_grad(set_to_none=True)
                logits = model(xb)  # every view is a training example of its own
                nn.functional.cross_entropy(logits.reshape(-1, num_classes),
                                            yb.repeat_interleave(views)).backward()
            optimizer.step()
            if ema is not None:
                ema.update(model)
            steps += 1
            probs = torch.softmax(logits.detach(), dim=-1)
            probs = probs.mean(1) if probs.ndim == 3 else probs
            tot_loss += float(nn.functional.nll_loss(probs.clamp(min=1e-12).log(), yb, reduction="sum"))
            correct += int((probs.argmax(1) == yb).sum())
            seen += len(yb)
        row: dict[str, Any] = dict(epoch=epoch, steps=steps, loss=tot_loss / max(seen, 1),
                                   train_accuracy=correct / max(seen, 1))
        if xt is not None:
            scores = _accuracy([evaluated, model] if ema is not None else [model], xt, yt)  # type: ignore[list-item]
            row["test_loss"], row["test_accuracy"] = scores[0]
            if ema is not None:
                row["test_accuracy_raw"] = scores[1][1]
        if core is not None:
            if epoch == config.epochs or (epsilon_every is not None and epoch % epsilon_every == 0):
                row.update(core.epsilons())
            else:
                row.update(epsilon_prv=math.nan, epsilon_rdp=math.nan)
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
    history = pd.DataFrame(rows)
    history["dp"] = config.dp
    history["noise_multiplier"] = sigma
    history["sample_rate"] = sample_rate
    history["delta"] = config.delta if config.dp else None
    eps = {k.removeprefix("epsilon_"): float(rows[-1][k]) for k in rows[-1] if k.startswith("epsilon_")}
    return TrainResult(model=evaluated, history=history, config=config, noise_multiplier=sigma,
                       sample_rate=sample_rate, steps=steps, epsilon=eps,
                       seconds=time.perf_counter() - t_start, event=core.event() if core is not None else None)
