"""dpnb.privacy: against Opacus, known values, monotonicity, calibration."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dpnb import privacy
from dpnb.accountants import opacus_epsilon
from dpnb.params import ParameterError

SIGMAS = [0.5, 0.8, 1.1, 2.0, 5.0]
RATES = [1e-4, 1e-3, 0.01, 0.1, 0.3, 1.0]


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("q", RATES)
def test_sgm_rdp_matches_opacus(sigma: float, q: float) -> None:
    from opacus.accountants.analysis.rdp import compute_rdp

    ours = privacy.sgm_rdp(noise_multiplier=sigma, sample_rate=q)
    theirs = np.array(compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=list(privacy.DEFAULT_ORDERS)))
    # Opacus stops its fractional-order series at terms below e^-30 (~1e-13 absolute in
    # log A_alpha = (alpha - 1) * RDP); dpnb sums to e^-40. Where log A_alpha > 1e-7 that
    # truncation is below 1e-6 relative, and there the two must agree to 1e-6.
    orders = np.array(privacy.DEFAULT_ORDERS)
    resolved = theirs * (orders - 1) > 1e-7
    np.testing.assert_allclose(ours[resolved], theirs[resolved], rtol=1e-6)
    np.testing.assert_allclose(ours, theirs, atol=1e-12, rtol=1e-4)


@pytest.mark.parametrize("sigma", [0.7, 1.1, 3.0])
@pytest.mark.parametrize("q", [1e-3, 0.01, 0.1])
@pytest.mark.parametrize("steps", [1, 100, 10_000])
def test_epsilon_matches_opacus_rdp_accountant(sigma: float, q: float, steps: int) -> None:
    ours = privacy.rdp_epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=1e-5)[0]
    theirs = opacus_epsilon("rdp", noise_multiplier=sigma, sample_rate=q, steps=steps, delta=1e-5)
    assert ours == pytest.approx(theirs, rel=1e-6)


def test_most_of_the_grid_is_resolved() -> None:
    """The 1e-6 comparison above is not vacuous: it covers most (sigma, q, order) points."""
    orders = np.array(privacy.DEFAULT_ORDERS)
    covered = [privacy.sgm_rdp(noise_multiplier=s, sample_rate=q) * (orders - 1) > 1e-7
               for s in SIGMAS for q in RATES]
    assert np.mean(covered) > 0.75


def test_gaussian_mechanism_rdp_is_alpha_over_two_sigma_squared() -> None:
    orders = [1.5, 2, 10, 32]
    np.testing.assert_allclose(privacy.sgm_rdp(noise_multiplier=2.0, sample_rate=1.0, orders=orders),
                               np.array(orders) / 8)
    np.testing.assert_allclose(privacy.gaussian_rdp(noise_multiplier=2.0, orders=orders),
                               np.array(orders) / 8)


def test_integer_order_by_direct_numerical_integration() -> None:
    """A_alpha as the integral E_{mu0}[(mu/mu0)^alpha], computed by quadrature."""
    from scipy import integrate, stats

    sigma, q = 1.3, 0.05
    for alpha in (2, 3.5, 8):
        def integrand(z: float) -> float:
            mu0 = stats.norm.pdf(z, 0, sigma)
            mu = (1 - q) * mu0 + q * stats.norm.pdf(z, 1, sigma)
            return mu0 * (mu / mu0) ** alpha
        a, _ = integrate.quad(integrand, -40, 40, limit=200)
        expected = math.log(a) / (alpha - 1)
        ours = privacy.sgm_rdp(noise_multiplier=sigma, sample_rate=q, orders=[alpha])[0]
        assert ours == pytest.approx(expected, rel=1e-6)


def test_classic_reference_values() -> None:
    """N=60000, batch 256, sigma 1.1, 60 epochs, delta 1e-5 (Abadi et al. 2016; TF Privacy)."""
    q, steps = privacy.sample_rate_and_steps(dataset_size=60_000, batch_size=256, epochs=60)
    assert steps == 14_063
    old, order = privacy.rdp_epsilon(noise_multiplier=1.1, sample_rate=q, steps=steps, delta=1e-5,
                                     conversion="mironov")
    assert round(old, 2) == 3.01
    new, _ = privacy.rdp_epsilon(noise_multiplier=1.1, sample_rate=q, steps=steps, delta=1e-5)
    assert new == pytest.approx(2.60, abs=0.01)
    prv = privacy.prv_epsilon(noise_multiplier=1.1, sample_rate=q, steps=steps, delta=1e-5)
    assert prv == pytest.approx(2.39, abs=0.02)
    assert prv < new < old


def test_balle_conversion_never_exceeds_mironov() -> None:
    for sigma in (0.6, 1.0, 4.0):
        kw = dict(noise_multiplier=sigma, sample_rate=0.02, steps=500, delta=1e-6)
        assert (privacy.epsilon_by_order(**kw, conversion="balle")
                <= privacy.epsilon_by_order(**kw, conversion="mironov")).all()


def test_epsilon_is_monotone_in_sigma_rate_and_steps() -> None:
    def eps(sigma: float = 1.0, q: float = 0.01, steps: int = 1000) -> float:
        return privacy.rdp_epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=1e-5)[0]

    sig = [eps(sigma=s) for s in (0.6, 0.8, 1.0, 1.5, 3.0)]
    assert all(a > b for a, b in zip(sig, sig[1:]))
    rate = [eps(q=q) for q in (0.001, 0.005, 0.01, 0.05)]
    assert all(a < b for a, b in zip(rate, rate[1:]))
    st = [eps(steps=t) for t in (10, 100, 1000, 5000)]
    assert all(a < b for a, b in zip(st, st[1:]))
    curve = privacy.epsilon_curve(noise_multiplier=1.0, sample_rate=0.01, steps=[10, 100, 1000, 5000],
                                  delta=1e-5)
    np.testing.assert_allclose(curve, st)


def test_gaussian_delta_matches_single_release_prv() -> None:
    # A single unsampled step: the exact profile and the numerical PRV accountant agree.
    d = privacy.gaussian_delta(noise_multiplier=2.0, epsilon=1.0)
    assert 0 < d < 1
    eps = privacy.prv_epsilon(noise_multiplier=2.0, sample_rate=1.0, steps=1, delta=d)
    assert eps == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_calibration_lands_just_below_target(accountant: str) -> None:
    kw = dict(sample_rate=256 / 60_000, steps=14_063, delta=1e-5)
    sigma = privacy.calibrate_noise_multiplier(target_epsilon=3.0, accountant=accountant, **kw)
    eps = privacy.epsilon(noise_multiplier=sigma, accountant=accountant, **kw)
    assert 2.97 <= eps <= 3.0
    eps_less_noise = privacy.epsilon(noise_multiplier=sigma * 0.99, accountant=accountant, **kw)
    assert eps_less_noise > 3.0


def test_calibration_below_one() -> None:
    sigma = privacy.calibrate_noise_multiplier(target_epsilon=50, sample_rate=0.01, steps=100, delta=1e-5)
    assert sigma < 1
    assert privacy.epsilon(noise_multiplier=sigma, sample_rate=0.01, steps=100, delta=1e-5) <= 50


def test_unreachable_target_is_a_parameter_error() -> None:
    with pytest.raises(ParameterError, match="target_epsilon=0.01 is unreachable"):
        privacy.calibrate_noise_multiplier(target_epsilon=0.01, sample_rate=0.5, steps=10_000, delta=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(noise_multiplier=0.0, sample_rate=0.1), r"noise_multiplier must be > 0, got 0"),
        (dict(noise_multiplier=-1, sample_rate=0.1), r"noise_multiplier must be > 0"),
        (dict(noise_multiplier=1.0, sample_rate=0.0), r"sample_rate must be in \(0, 1\], got 0"),
        (dict(noise_multiplier=1.0, sample_rate=1.5), r"sample_rate must be in \(0, 1\]"),
        (dict(noise_multiplier=float("nan"), sample_rate=0.1), r"noise_multiplier must be > 0"),
    ],
)
def test_bad_mechanism_parameters(kwargs: dict, message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        privacy.sgm_rdp(**kwargs)


def test_bad_delta_and_batch() -> None:
    with pytest.raises(ParameterError, match=r"delta must be in \(0, 1\)"):
        privacy.rdp_epsilon(noise_multiplier=1, sample_rate=0.1, steps=10, delta=1.0)
    with pytest.raises(ParameterError, match="batch_size must be at most dataset_size"):
        privacy.sample_rate_and_steps(dataset_size=100, batch_size=101, epochs=1)
