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

:func:`train_augmult` is a small DP-SGD loop (Poisson sampling,
per-view gradients from Opacus's hooks, summed per example, then clipped) that implements the
first two, since Opacus's optimizer would clip every view on its own.

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

import copy
import time
import warnings
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from dpnb import privacy
from dpnb.params import check_int, check_number


class WSConv2d(nn.Conv2d):
    """Convolution with weight standardisation (Qiao et al. 2019): each output filter's weights are
    shifted and scaled to zero mean and unit variance before use."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        w = (w - mean) / torch.sqrt(var + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def standardize_weights(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Conv2d`` of ``model`` by a :class:`WSConv2d` with the same parameters."""
    for name, child in list(model.named_children()):
        if type(child) is nn.Conv2d:
            ws = WSConv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                          child.dilation, child.groups, child.bias is not None)
            ws.load_state_dict(child.state_dict())
            setattr(model, name, ws)
        else:
            standardize_weights(child)
    return model


class EMA:
    """Exponential moving average of parameters, ``avg = decay * avg + (1 - decay) * params``
    (De et al. 2022, Sec. 3.3; post-processing of the DP iterates, so free of privacy cost).

    With ``warmup``, update ``t`` (from 0) uses ``min(decay, (1 + t) / (10 + t))``, the schedule of
    TensorFlow's ``ExponentialMovingAverage(num_updates=...)``: a short run is then an average of
    its recent iterates, not mostly of the initial weights (decay 0.99 over 50 steps keeps 60% of them).
    """

    def __init__(self, model: nn.Module, *, decay: float, warmup: bool = False) -> None:
        self.decay = check_number("ema_decay", decay, low=0, high=1, high_open=True)
        self.warmup = warmup
        self.updates = 0
        self.average = copy.deepcopy(model).eval()
        for p in self.average.parameters():
            p.requires_grad_(False)

    @property
    def current_decay(self) -> float:
        """The decay the next :meth:`update` uses."""
        t = self.updates
        return min(self.decay, (1 + t) / (10 + t)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay
        for a, p in zip(self.average.parameters(), model.parameters()):
            a.mul_(d).add_(p.detach(), alpha=1 - d)
        self.updates += 1


def augment(x: torch.Tensor, *, multiplicity: int, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """``multiplicity`` random views of each image (reflect-pad + random crop, random horizontal flip):
    ``(B, C, H, W) -> (B, K, C, H, W)``. ``multiplicity=0`` returns the images themselves as one view."""
    if multiplicity == 0:
        return x[:, None]
    B, C, H, W = x.shape
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


def clipped_gradient_sum(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, max_grad_norm: float,
                         chunk_size: int | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Sum over examples of each example's clipped gradient, and the per-example norms before clipping.

    ``x`` is ``(B, K, ...)``: example ``i``'s gradient is that of the mean loss over its ``K`` views
    (De et al. 2022, Sec. 3.1), clipped to ``max_grad_norm``; each example therefore moves the sum
    by at most ``max_grad_norm``. Per-view gradients come from Opacus's per-sample hooks
    (``GradSampleModule``) on the ``B*K`` rows and are summed per example before clipping.
    ``chunk_size`` examples are processed at a time (memory: ``chunk_size * K`` per-row gradients).
    """
    from opacus import GradSampleModule

    wrapped = model if isinstance(model, GradSampleModule) else GradSampleModule(model, loss_reduction="sum")
    inner = wrapped._module
    params = [(k, p) for k, p in inner.named_parameters() if p.requires_grad]
    total = {k: torch.zeros_like(p) for k, p in params}
    B, K = x.shape[:2]
    norms = []
    for start in range(0, B, chunk_size or max(B, 1)):
        xb, yb = x[start:start + (chunk_size or B)], y[start:start + (chunk_size or B)]
        b = len(yb)
        out = wrapped(xb.flatten(0, 1))
        loss = F.cross_entropy(out, yb.repeat_interleave(K), reduction="sum") / K  # mean over views
        with warnings.catch_warnings():  # "full backward hook ... no inputs require gradients": expected
            warnings.simplefilter("ignore", UserWarning)
            loss.backward()
        per_example = {k: p.grad_sample.reshape(b, K, *p.shape).sum(1) for k, p in params}
        for _, p in params:
            p.grad_sample, p.grad = None, None
        n = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in per_example.values()))
        factor = (max_grad_norm / (n + 1e-6)).clamp(max=1.0)
        for k, g in per_example.items():
            total[k] += torch.einsum("b,b...->...", factor, g)
        norms.append(n.detach())
    if wrapped is not model:
        wrapped._close()
    return total, torch.cat(norms) if norms else torch.zeros(0)


def train_augmult(model: nn.Module, train_set: TensorDataset, test_set: TensorDataset | None, *, epochs: int,
                  batch_size: int, lr: float, max_grad_norm: float, delta: float, momentum: float = 0.9,
                  noise_multiplier: float | None = None, target_epsilon: float | None = None,
                  multiplicity: int = 0, ema_decay: float | None = None, ema_warmup: bool = True, seed: int = 0,
                  device: torch.device | str = "cpu", chunk_size: int | None = 256,
                  progress: bool = True) -> dict[str, Any]:
    """DP-SGD with Poisson sampling (rate ``batch_size / N``), augmentation multiplicity and optional EMA.

    σ is ``noise_multiplier`` or calibrated (PRV) so that ``epochs * N / batch_size`` steps end at
    ``target_epsilon``. Returns a summary row (accuracy of the EMA model, with the warm-up of
    :class:`EMA` unless ``ema_warmup=False``, when ``ema_decay`` is set)
    with ε by PRV and RDP, and the per-epoch history.
    """
    from tqdm.auto import tqdm

    from dpnb.train import evaluate

    x_all, y_all = train_set.tensors
    n = len(y_all)
    epochs = check_int("epochs", epochs, low=1)
    batch_size = check_int("batch_size", batch_size, low=1, high=n)
    multiplicity = check_int("multiplicity", multiplicity, low=0)
    q, steps = privacy.sample_rate_and_steps(dataset_size=n, batch_size=batch_size, epochs=epochs)
    if noise_multiplier is None:
        noise_multiplier = privacy.calibrate_noise_multiplier(
            target_epsilon=check_number("target_epsilon", target_epsilon, low=0, low_open=True),
            sample_rate=q, steps=steps, delta=delta, accountant="prv")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    device = torch.device(device)
    from opacus import GradSampleModule

    model = model.to(device).train()
    wrapped = GradSampleModule(model, loss_reduction="sum")
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    ema = EMA(model, decay=ema_decay, warmup=ema_warmup) if ema_decay else None
    steps_per_epoch = max(steps // epochs, 1)
    rows, t0, done = [], time.perf_counter(), 0
    for epoch in tqdm(range(1, epochs + 1), desc="epochs", disable=not progress):
        te = time.perf_counter()
        for _ in range(steps_per_epoch if epoch < epochs else steps - done):
            idx = torch.nonzero(torch.rand(n, generator=g) < q).flatten()   # Poisson sampling
            xb = augment(x_all[idx], multiplicity=multiplicity, generator=g).to(device)
            total, _ = clipped_gradient_sum(wrapped, xb, y_all[idx].to(device), max_grad_norm=max_grad_norm,
                                            chunk_size=chunk_size)
            for name, p in model.named_parameters():
                noise = torch.normal(0.0, noise_multiplier * max_grad_norm, p.shape, generator=g).to(device)
                p.grad = (total[name] + noise) / batch_size                 # divide by the expected size
            opt.step()
            if ema is not None:
                ema.update(model)
            done += 1
        evaluated = ema.average if ema is not None else model
        row: dict[str, Any] = dict(epoch=epoch, steps=done, seconds=time.perf_counter() - te)
        if test_set is not None:
            row["test_loss"], row["test_accuracy"] = evaluate(evaluated, test_set, device=device)
        rows.append(row)
    wrapped._close()
    eps_prv = privacy.prv_epsilon(noise_multiplier=noise_multiplier, sample_rate=q, steps=steps, delta=delta)
    eps_rdp = privacy.rdp_epsilon(noise_multiplier=noise_multiplier, sample_rate=q, steps=steps, delta=delta)[0]
    history = pd.DataFrame(rows)
    return dict(model=ema.average if ema is not None else model, history=history, multiplicity=multiplicity,
                ema_decay=ema_decay, ema_warmup=ema_warmup if ema_decay else None, noise_multiplier=noise_multiplier, sample_rate=q, steps=steps, delta=delta,
                epsilon_prv=eps_prv, epsilon_rdp=eps_rdp,
                test_accuracy=float(history["test_accuracy"].iloc[-1]) if test_set is not None else None,
                seconds=time.perf_counter() - t0)
