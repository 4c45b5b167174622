"""Cross-checks of dpnb's accounting against Opacus's accountants (the budget chapter).

The budget chapter checks the from-scratch RDP code against Opacus's ``RDPAccountant``
(which must agree to 1e-6 relative) and shows how much the tight ``PRVAccountant``
(Gopi et al. 2021) saves over RDP.

Example::

    >>> df = crosscheck(noise_multipliers=[1.1], sample_rates=[256 / 60000], steps=[14063], delta=1e-5)
    >>> bool(df["rel_diff"].iloc[0] < 1e-6), round(float(df["eps_rdp_dpnb"].iloc[0]), 2)
    (True, 2.6)
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence

import pandas as pd

from dpnb.privacy import rdp
from dpnb.privacy.prv import opacus_epsilon, prv_epsilon


def crosscheck(*, noise_multipliers: Sequence[float], sample_rates: Sequence[float],
               steps: Sequence[int], delta: float) -> pd.DataFrame:
    """One row per (σ, q, steps): ε from dpnb's RDP, Opacus's RDP and Opacus's PRV."""
    rows = []
    for sigma, q, t in itertools.product(noise_multipliers, sample_rates, steps):
        t0 = time.perf_counter()
        ours = rdp.rdp_epsilon(noise_multiplier=sigma, sample_rate=q, steps=t, delta=delta,
                               orders=rdp.DEFAULT_ORDERS)[0]  # Opacus's grid: like for like
        t1 = time.perf_counter()
        theirs = opacus_epsilon("rdp", noise_multiplier=sigma, sample_rate=q, steps=t, delta=delta)
        t2 = time.perf_counter()
        prv = opacus_epsilon("prv", noise_multiplier=sigma, sample_rate=q, steps=t, delta=delta)
        rows.append(dict(noise_multiplier=sigma, sample_rate=q, steps=t, delta=delta,
                         eps_rdp_dpnb=ours, eps_rdp_opacus=theirs,
                         rel_diff=abs(ours - theirs) / theirs, eps_prv_opacus=prv,
                         prv_saving=1 - prv / theirs, seconds_dpnb=t1 - t0, seconds_opacus=t2 - t1))
    return pd.DataFrame(rows)


def compare_accountants(*, noise_multiplier: float, sample_rate: float, steps: int,
                        delta: float) -> pd.DataFrame:
    """ε of one run under the old RDP conversion, today's RDP conversion and PRV, with timings.

    Columns: ``accounting`` (a label for tables), ``accountant`` (short name for the results
    CSV), ``epsilon``, ``optimal_order`` (RDP only) and ``seconds``.
    """
    kw = dict(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps, delta=delta)
    rows = []
    for label, name in [("RDP, Mironov 2017 conversion (older tools)", "rdp-mironov"),
                        ("RDP, Balle et al. 2020 conversion (Opacus RDPAccountant today)", "rdp"),
                        ("PRV accountant (Gopi et al. 2021, via Opacus)", "prv")]:
        t0 = time.perf_counter()
        if name == "prv":
            eps, order = prv_epsilon(**kw), None
        else:
            eps, order = rdp.rdp_epsilon(**kw, conversion="mironov" if name == "rdp-mironov" else "balle")
        rows.append(dict(accounting=label, accountant=name, epsilon=eps, optimal_order=order,
                         seconds=time.perf_counter() - t0))
    return pd.DataFrame(rows)


def accountants_over_steps(*, noise_multiplier: float, sample_rate: float, steps: Sequence[int],
                           delta: float) -> pd.DataFrame:
    """ε after each step count under the two RDP conversions and PRV: columns ``steps``, ``accounting``, ``epsilon``.

    Poisson sampling, add/remove adjacency. The figure that shows where PRV's tighter accounting
    pays (many steps at small q) instead of asserting it.

        >>> df = accountants_over_steps(noise_multiplier=1.1, sample_rate=0.01, steps=[100], delta=1e-5)
        >>> df.sort_values("epsilon")["accounting"].tolist()
        ['PRV', 'RDP, Balle et al. 2020', 'RDP, Mironov 2017']
    """
    rows = []
    for conversion, name in (("mironov", "RDP, Mironov 2017"), ("balle", "RDP, Balle et al. 2020")):
        eps = rdp.epsilon_curve(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps,
                                delta=delta, conversion=conversion)  # type: ignore[arg-type]
        rows += [dict(steps=int(t), accounting=name, epsilon=float(e)) for t, e in zip(steps, eps)]
    rows += [dict(steps=int(t), accounting="PRV", epsilon=prv_epsilon(noise_multiplier=noise_multiplier,
                                                                       sample_rate=sample_rate, steps=int(t),
                                                                       delta=delta)) for t in steps]
    return pd.DataFrame(rows)


def sampling_and_adjacency(*, noise_multiplier: float, sample_rate: float, steps: int,
                           delta: float) -> pd.DataFrame:
    """The same (σ, q, T) under each sampling scheme and adjacency, and what each accountant says.

    One row per (sampling, adjacency, accountant): ``epsilon`` where :func:`dpnb.privacy.epsilon`
    bounds the combination, else NaN and the one-line reason in ``note`` (e.g. shuffled batches,
    which no accountant here bounds).

        >>> df = sampling_and_adjacency(noise_multiplier=1.1, sample_rate=0.01, steps=100, delta=1e-5)
        >>> df[df["sampling"] == "shuffled"]["epsilon"].isna().all()
        np.True_
    """
    from dpnb.privacy.accountant import UnsupportedEvent, epsilon, label
    from dpnb.privacy.events import SampledGaussianEvent

    rows = []
    for sampling, adjacency in (("poisson", "add/remove"), ("shards", "replace-one"), ("shuffled", "add/remove"),
                                ("poisson", "replace-one")):
        event = SampledGaussianEvent(noise_multiplier, sample_rate, steps, sampling=sampling,  # type: ignore[arg-type]
                                     adjacency=adjacency)  # type: ignore[arg-type]
        for accountant in ("rdp", "prv"):
            try:
                eps, note = epsilon(event, delta=delta, accountant=accountant), label(event, accountant)  # type: ignore[arg-type]
            except UnsupportedEvent as e:
                eps, note = float("nan"), f"refused: {e}"
            rows.append(dict(sampling=event.sampling_text, adjacency=adjacency, accountant=accountant, epsilon=eps,
                             note=note))
    return pd.DataFrame(rows)
