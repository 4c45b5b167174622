r"""The DP-SGD step in named stages, for the loops the book writes by hand.

Abadi et al. (2016, Algorithm 1), with Poisson sampling as the accountants assume:

1. **sample** (:meth:`DPSGD.sample`): each of the N examples joins the batch independently
   with probability q;
2. **clip and sum** (:func:`clip_and_sum`): each example's gradient g_i is scaled to norm at
   most C and the results are summed, :math:`S = \sum_i g_i \min(1, C/\lVert g_i\rVert)`; removing
   one example moves S by at most C;
3. **add noise** (:func:`add_noise`): :math:`\tilde S = S + \mathcal N(0, \sigma^2 C^2 I)`;
4. **scale** (:func:`scale`): divide by the *expected* batch size qN, never by the drawn
   size (which would depend on the private data).

The book's one sampling-rate convention for its training loops is :func:`poisson_rate`:
q = 1/⌈N/B⌉ and ⌈N/B⌉ steps per epoch, the rate Opacus's ``DPDataLoader`` samples at, so that
every loop (Opacus's in :mod:`dpnb.train`, and those here) runs the same mechanism for the
same (N, B). :class:`DPSGD` holds σ (given, or calibrated by the one calibrator
:func:`dpnb.privacy.calibrate_noise_multiplier`), counts the steps it privatised, and hands the
record of what ran (:class:`dpnb.privacy.SampledGaussianEvent`) to the accountant.

Per-example gradients come from wherever suits the model: Opacus's hooks (augmentation
multiplicity, :mod:`dpnb.scale`), ``torch.func`` (the DP-GAN discriminator, :mod:`dpnb.gan`),
or a closed form (linear heads, :mod:`dpnb.linear`). GS-WGAN's sanitiser
(:mod:`dpnb.gswgan`) is a mechanism of its own but draws its noise with :func:`add_noise`.

Example::

    >>> import torch
    >>> core = DPSGD(dataset_size=1000, batch_size=100, epochs=1, max_grad_norm=1.0,
    ...              noise_multiplier=1.0, delta=1e-5, generator=torch.Generator().manual_seed(0))
    >>> core.sample_rate, core.steps_per_epoch, core.expected_batch_size
    (0.1, 10, 100.0)
    >>> grads = {"w": torch.ones(3, 4)}                     # three examples, norm 2 each
    >>> sums, norms = clip_and_sum(grads, max_grad_norm=1.0)
    >>> round(float(sums["w"].norm()), 4), norms.tolist()  # each clipped to norm 1: sum has norm 3
    (3.0, [2.0, 2.0, 2.0])
    >>> step = core.privatize(sums)
    >>> core.steps, core.event().steps
    (1, 1)
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from dpnb import privacy
from dpnb.params import ParameterError, check_choice, check_int, check_number

__all__ = ["poisson_rate", "clip_factors", "clip_and_sum", "add_noise", "scale", "DPSGD", "epsilons",
           "accountant_label"]


def poisson_rate(*, dataset_size: int, batch_size: int) -> tuple[float, int]:
    """(q, steps per epoch) of the book's training loops: q = 1/⌈N/B⌉, ⌈N/B⌉ steps an epoch.

    The expected batch is qN, at most B (equal when B divides N).

        >>> poisson_rate(dataset_size=930, batch_size=10)
        (0.010752688172043012, 93)
    """
    n = check_int("dataset_size", dataset_size, low=1)
    b = check_int("batch_size", batch_size, low=1, high=n)
    steps = math.ceil(n / b)
    return 1 / steps, steps


def clip_factors(norms: torch.Tensor, *, max_grad_norm: float) -> torch.Tensor:
    """min(1, C / (‖g_i‖ + 1e-6)) for each example: Opacus's flat clipping factor."""
    return (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)


def clip_and_sum(grads: Mapping[str, torch.Tensor], *, max_grad_norm: float
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Stage 2: ``{name: (B, *shape)}`` per-example gradients → (clipped sums, per-example norms).

    The norm of example i is taken over all its parameters together (flat clipping, as Opacus).
    An empty batch (B = 0) gives zero sums and no norms.
    """
    check_number("max_grad_norm", max_grad_norm, low=0, low_open=True)
    norms = torch.sqrt(sum((g.flatten(1) ** 2).sum(1) for g in grads.values()))  # type: ignore[arg-type]
    factors = clip_factors(norms, max_grad_norm=max_grad_norm)
    return {k: torch.einsum("b,b...->...", factors, g) for k, g in grads.items()}, norms


def add_noise(summed: torch.Tensor, *, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Stage 3: ``summed + N(0, std²)`` per coordinate, drawn on the generator's device."""
    if std == 0:
        return summed
    where = generator.device if generator is not None else summed.device
    noise = torch.randn(summed.shape, generator=generator, dtype=summed.dtype, device=where)
    return summed + std * noise.to(summed.device)


def scale(noisy: torch.Tensor, *, expected_batch_size: float) -> torch.Tensor:
    """Stage 4: divide by the expected batch size (qN), not by the batch drawn."""
    return noisy / expected_batch_size


class DPSGD:
    """One DP-SGD mechanism: σ, Poisson sampling at the book's rate, and the count of steps run.

    Give ``noise_multiplier``, or ``target_epsilon`` to calibrate σ with ``accountant`` for
    ``epochs * steps_per_epoch`` steps. ``dataset_size`` is the number of *private* examples.
    ``composed_with`` are other releases of the same data (e.g. noisy statistics it was normalised
    with): calibration and ε cover them and this run together.
    """

    def __init__(self, *, dataset_size: int, batch_size: int, epochs: int | None = None, max_grad_norm: float,
                 noise_multiplier: float | None = None, target_epsilon: float | None = None, delta: float,
                 accountant: str = "prv", steps: int | None = None, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu",
                 composed_with: tuple[privacy.SampledGaussianEvent, ...] = ()) -> None:
        self.dataset_size = check_int("dataset_size", dataset_size, low=1)
        self.sample_rate, self.steps_per_epoch = poisson_rate(dataset_size=dataset_size, batch_size=batch_size)
        if (epochs is None) == (steps is None):
            raise ParameterError("give exactly one of epochs and steps")
        planned = steps if steps is not None else check_int("epochs", epochs, low=1) * self.steps_per_epoch
        self.planned_steps = check_int("steps", planned, low=1)
        self.max_grad_norm = check_number("max_grad_norm", max_grad_norm, low=0, low_open=True)
        self.delta = check_number("delta", delta, low=0, high=1, low_open=True, high_open=True)
        self.accountant = accountant
        self.composed_with = tuple(composed_with)
        if (noise_multiplier is None) == (target_epsilon is None):
            raise ParameterError("give exactly one of noise_multiplier and target_epsilon")
        if noise_multiplier is not None:
            self.noise_multiplier = check_number("noise_multiplier", noise_multiplier, low=0, low_open=True)
        else:
            plan = privacy.SampledGaussianEvent(None, self.sample_rate, self.planned_steps,
                                                composed_with=self.composed_with)
            self.noise_multiplier = privacy.calibrate_noise_multiplier(
                plan, target_epsilon=check_number("target_epsilon", target_epsilon, low=0, low_open=True),
                delta=self.delta, accountant=accountant)  # type: ignore[arg-type]
        self.expected_batch_size = self.sample_rate * self.dataset_size
        self.generator = generator
        self.device = torch.device(device)
        self.steps = 0

    def sample(self) -> torch.Tensor:
        """Stage 1: indices of a Poisson batch (possibly empty), on ``device``."""
        where = self.generator.device if self.generator is not None else "cpu"
        keep = torch.rand(self.dataset_size, generator=self.generator, device=where) < self.sample_rate
        return torch.nonzero(keep).squeeze(1).to(self.device)

    def privatize(self, clipped_sums: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Stages 3 and 4 on the clipped sums of one batch; counts the step. Returns the noisy mean."""
        std = self.noise_multiplier * self.max_grad_norm
        out = {k: scale(add_noise(s, std=std, generator=self.generator), expected_batch_size=self.expected_batch_size)
               for k, s in clipped_sums.items()}
        self.record_step()
        return out

    def record_step(self) -> None:
        """Count one privatised step (for loops whose stages 2-4 run elsewhere, e.g. Opacus's optimizer)."""
        self.steps += 1

    def event(self) -> privacy.SampledGaussianEvent:
        """The record of what ran so far (σ, q, the steps privatised; Poisson, add/remove; with
        ``composed_with``)."""
        return privacy.SampledGaussianEvent(self.noise_multiplier, self.sample_rate, max(self.steps, 1),
                                            composed_with=self.composed_with)

    def epsilons(self) -> dict[str, float]:
        """``{"epsilon_prv": ..., "epsilon_rdp": ...}`` after the steps run so far (see :func:`epsilons`)."""
        return epsilons(self.event(), delta=self.delta)


def epsilons(event: privacy.SampledGaussianEvent, *, delta: float) -> dict[str, float]:
    """ε of ``event`` under PRV and RDP, as the history columns ``epsilon_prv`` and ``epsilon_rdp``.

    A PRV value that cannot be computed within its limits (:class:`dpnb.privacy.AccountantLimit`)
    is NaN; the RDP value is always there and is a valid bound on its own.
    """
    out = {}
    for acc in ("prv", "rdp"):
        try:
            out[f"epsilon_{acc}"] = privacy.epsilon(event, delta=delta, accountant=acc)  # type: ignore[arg-type]
        except privacy.AccountantLimit:
            out[f"epsilon_{acc}"] = math.nan
    return out


def accountant_label(accountant: str) -> str:
    """The accountant column of a DP-SGD run's ε in a results CSV: Poisson sampling, add/remove.

    ``accountant`` is ``rdp``, ``prv`` or ``rdp-mironov`` (RDP with Mironov's 2017 conversion, which
    the budget chapter shows beside today's).

        >>> accountant_label("prv")
        'prv (Poisson sampling, add/remove)'
    """
    check_choice("accountant", accountant, (*privacy.ACCOUNTANTS, "rdp-mironov"))
    return privacy.SampledGaussianEvent(1.0, 0.5, 1).label(accountant)
