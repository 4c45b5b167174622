"""Privacy accounting for the book's DP training runs.

Four modules, from the bottom up:

* :mod:`dpnb.privacy.rdp`: pure functions, the Rényi DP of the sampled Gaussian mechanism
  (Poisson, add/remove) and of sampling without replacement (replace-one), and the conversions
  to (ε, δ); no torch, no Opacus;
* :mod:`dpnb.privacy.prv`: the PRV accountant through Opacus, with its grid predicted and
  bounded before anything is allocated (the one bridge to Opacus's accountants);
* :mod:`dpnb.privacy.events`: :class:`SampledGaussianEvent`, the record of what ran (σ, q,
  steps, sampling scheme, adjacency) and the book's one sampling-rate convention;
* :mod:`dpnb.privacy.accountant`: :func:`epsilon` of an event under an accountant, refusing
  what it cannot bound, and :func:`calibrate_noise_multiplier`, the one calibrator.

:mod:`dpnb.privacy.compare` holds the budget chapter's cross-checks against Opacus.

Example::

    >>> from dpnb import privacy
    >>> run = privacy.SampledGaussianEvent.from_batches(noise_multiplier=1.1, dataset_size=60_000,
    ...                                                 batch_size=256, epochs=60)
    >>> round(privacy.epsilon(run, delta=1e-5, accountant="rdp"), 2), run.label("rdp")
    (2.6, 'rdp (Poisson sampling, add/remove)')
"""

from dpnb.privacy.accountant import (
    ACCOUNTANTS,
    Accountant,
    UnsupportedEvent,
    calibrate_noise_multiplier,
    epsilon,
    label,
    prv_eps_error,
    steps_within,
)
from dpnb.privacy.events import ADJACENCIES, SAMPLINGS, SampledGaussianEvent, sample_rate_and_steps
from dpnb.privacy.prv import AccountantLimit, prv_epsilon, prv_epsilon_and_error
from dpnb.privacy.rdp import (
    ACCOUNTING_ORDERS,
    DEFAULT_ORDERS,
    LARGE_ORDERS,
    WBK_ORDERS,
    Conversion,
    classic_gaussian_sigma,
    epsilon_by_order,
    epsilon_curve,
    gaussian_delta,
    gaussian_rdp,
    rdp_epsilon,
    rdp_to_epsilon,
    sgm_rdp,
    wbk_epsilon,
    wbk_subsampled_gaussian_rdp,
)

__all__ = [
    "ACCOUNTANTS", "Accountant", "UnsupportedEvent", "AccountantLimit", "calibrate_noise_multiplier",
    "epsilon", "label", "prv_eps_error", "steps_within", "ADJACENCIES", "SAMPLINGS", "SampledGaussianEvent",
    "sample_rate_and_steps",
    "prv_epsilon", "prv_epsilon_and_error", "ACCOUNTING_ORDERS", "DEFAULT_ORDERS", "LARGE_ORDERS",
    "WBK_ORDERS", "Conversion", "classic_gaussian_sigma", "epsilon_by_order", "epsilon_curve",
    "gaussian_delta", "gaussian_rdp", "rdp_epsilon", "rdp_to_epsilon", "sgm_rdp", "wbk_epsilon",
    "wbk_subsampled_gaussian_rdp",
]
