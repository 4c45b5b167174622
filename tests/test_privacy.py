"""dpnb.privacy: against Opacus, known values, monotonicity, calibration."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dpnb import privacy
from dpnb.params import ParameterError
from dpnb.privacy.prv import opacus_epsilon

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
    ours = privacy.rdp_epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=1e-5,
                               orders=privacy.DEFAULT_ORDERS)[0]
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
        def integrand(z: float, alpha: float = alpha) -> float:
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
    run = privacy.SampledGaussianEvent(None, sample_rate=256 / 60_000, steps=14_063)
    sigma = privacy.calibrate_noise_multiplier(run, target_epsilon=3.0, delta=1e-5, accountant=accountant)
    eps = privacy.epsilon(run.with_noise(sigma), delta=1e-5, accountant=accountant)
    assert 2.97 <= eps <= 3.0
    eps_less_noise = privacy.epsilon(run.with_noise(sigma * 0.99), delta=1e-5, accountant=accountant)
    assert eps_less_noise > 3.0


def test_calibration_below_one() -> None:
    run = privacy.SampledGaussianEvent(None, sample_rate=0.01, steps=100)
    sigma = privacy.calibrate_noise_multiplier(run, target_epsilon=50, delta=1e-5)
    assert sigma < 1
    assert privacy.epsilon(run.with_noise(sigma), delta=1e-5) <= 50


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
@pytest.mark.parametrize("q, steps, target", [(0.01, 100, 0.1), (1.0, 1, 0.05)])
def test_small_targets_are_reached(accountant: str, q: float, steps: int, target: float) -> None:
    """Orders up to 63 floor ε near 0.1 at δ = 1e-5 whatever σ; the extended grid reaches these targets."""
    run = privacy.SampledGaussianEvent(None, sample_rate=q, steps=steps)
    sigma = privacy.calibrate_noise_multiplier(run, target_epsilon=target, delta=1e-5, accountant=accountant)
    assert privacy.epsilon(run.with_noise(sigma), delta=1e-5, accountant=accountant,
                           prv_eps_error=privacy.prv_eps_error(target)) <= target
    floor = privacy.rdp_epsilon(noise_multiplier=1e4, sample_rate=q, steps=steps, delta=1e-5,
                                orders=privacy.DEFAULT_ORDERS)[0]
    assert floor > target  # Opacus's grid alone could not


def test_extended_orders_agree_with_opacus_grid_where_its_optimum_is_inside() -> None:
    kw = dict(noise_multiplier=1.1, sample_rate=256 / 60_000, steps=14_063, delta=1e-5)
    eps, order = privacy.rdp_epsilon(**kw)
    assert order < 63 and eps == privacy.rdp_epsilon(**kw, orders=privacy.DEFAULT_ORDERS)[0]
    big = dict(kw, noise_multiplier=1e3)  # optimum past 63: the extension only lowers epsilon
    assert privacy.rdp_epsilon(**big)[0] < privacy.rdp_epsilon(**big, orders=privacy.DEFAULT_ORDERS)[0]


def test_unreachable_target_is_a_parameter_error() -> None:
    run = privacy.SampledGaussianEvent(None, sample_rate=0.5, steps=10_000)
    with pytest.raises(ParameterError, match="target_epsilon=1e-06 is unreachable with noise_multiplier <= 100"):
        privacy.calibrate_noise_multiplier(run, target_epsilon=1e-6, delta=1e-5, sigma_max=100)


def test_events_the_accountant_cannot_bound_are_refused() -> None:
    for ev, acc, message in [
        (privacy.SampledGaussianEvent(1.0, 0.01, 10, sampling="shuffled"), "rdp", "shuffled batches"),
        (privacy.SampledGaussianEvent(1.0, 0.01, 10, sampling="shards", adjacency="replace-one"), "prv",
         "for shards without replacement"),
        (privacy.SampledGaussianEvent(1.0, 0.01, 10, adjacency="replace-one"), "rdp",
         "Poisson sampling under replace-one"),
    ]:
        with pytest.raises(privacy.UnsupportedEvent, match=message):
            privacy.epsilon(ev, delta=1e-5, accountant=acc)
        with pytest.raises(privacy.UnsupportedEvent):
            privacy.calibrate_noise_multiplier(ev, target_epsilon=1.0, delta=1e-5, accountant=acc)
    with pytest.raises(ParameterError, match="sampling must be one of"):
        privacy.SampledGaussianEvent(1.0, 0.01, 10, sampling="uniform")


def test_shards_event_is_the_wbk_bound_and_labelled_apart() -> None:
    ev = privacy.SampledGaussianEvent(1.07, 1 / 1000, 32 * 20_000, sampling="shards", adjacency="replace-one")
    assert privacy.epsilon(ev, delta=1e-5) == privacy.wbk_epsilon(noise_multiplier=1.07, sample_rate=1 / 1000,
                                                                   steps=32 * 20_000, delta=1e-5)[0]
    assert privacy.label(ev, "rdp") == "rdp-wbk (shards without replacement, replace-one)"
    assert privacy.label(privacy.SampledGaussianEvent(1.0, 0.1, 1), "prv") == "prv (Poisson sampling, add/remove)"


def test_prv_epsilon_is_never_negative() -> None:
    # σ = 7e4 on one unsampled step (grid widened to eps_error 7.1e-6): Opacus's bound is -9.4e-08 unclamped
    assert privacy.prv_epsilon(noise_multiplier=7e4, sample_rate=1.0, steps=1, delta=1e-5,
                               eps_error=5e-8) >= 0.0


def test_prv_grid_is_predicted_and_bounded() -> None:
    from opacus.accountants import PRVAccountant
    from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV, compute_safe_domain_size

    sigma, q, steps, delta = 1.1, 256 / 60_000, 14_063, 1e-5
    L = compute_safe_domain_size(prvs=[PoissonSubsampledGaussianPRV(q, sigma)], max_self_compositions=[steps],
                                 eps_error=0.01, delta_error=delta / 1000)
    domain = PRVAccountant()._get_domain(prvs=[PoissonSubsampledGaussianPRV(q, sigma)],
                                         num_self_compositions=[steps], eps_error=0.01, delta_error=delta / 1000)
    predicted = privacy.prv.grid_points(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta)
    assert predicted == pytest.approx(2 * L / domain.dt, rel=1e-3)
    assert predicted == pytest.approx(domain.size, rel=1e-3)
    # a run whose grid is too large: refused in one line, before any allocation
    with pytest.raises(privacy.AccountantLimit, match="its grid would need .* points"):
        privacy.prv_epsilon(noise_multiplier=0.5, sample_rate=0.5, steps=10_000, delta=1e-5)
    # a grid just over the limit: the error is widened instead, and the bound still holds
    eps, err = privacy.prv_epsilon_and_error(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta,
                                             max_points=predicted / 2)
    assert 0.01 < err <= 0.03 and eps >= privacy.prv_epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps,
                                                             delta=delta) - 0.01


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


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_composing_a_run_with_more_of_itself_is_the_longer_run(accountant: str) -> None:
    run = privacy.SampledGaussianEvent(1.1, 0.01, 300)
    composed = run.composed(run.with_steps(200))
    longer = privacy.epsilon(run.with_steps(500), delta=1e-5, accountant=accountant)
    assert privacy.epsilon(composed, delta=1e-5, accountant=accountant) == pytest.approx(longer, abs=0.02)
    assert privacy.epsilon(composed, delta=1e-5, accountant=accountant) > privacy.epsilon(
        run, delta=1e-5, accountant=accountant)


def test_composed_gaussian_releases_match_the_exact_gaussian_profile() -> None:
    # Gaussian releases with sigmas s1, s2 compose to one with sigma (s1^-2 + s2^-2)^(-1/2);
    # its exact (eps, delta) curve (Balle & Wang 2018) is the independent reference
    run = privacy.SampledGaussianEvent(3.0, 1.0, 1).composed(privacy.SampledGaussianEvent.gaussian(
        noise_multiplier=4.0, releases=2))
    sigma = (3.0**-2 + 2 * 4.0**-2) ** -0.5
    delta = privacy.gaussian_delta(noise_multiplier=sigma, epsilon=1.0)
    assert privacy.epsilon(run, delta=delta, accountant="prv") == pytest.approx(1.0, abs=0.02)
    assert privacy.epsilon(run, delta=delta, accountant="rdp") >= 1.0  # RDP: a looser bound, never tighter


def test_calibration_covers_what_is_composed_and_labels_say_so() -> None:
    plan = privacy.SampledGaussianEvent(None, 1 / 6, 360)
    stats = privacy.SampledGaussianEvent.gaussian(noise_multiplier=8.0, releases=2)
    alone = privacy.calibrate_noise_multiplier(plan, target_epsilon=3.0, delta=1e-5, accountant="prv")
    sigma = privacy.calibrate_noise_multiplier(plan.composed(stats), target_epsilon=3.0, delta=1e-5,
                                               accountant="prv")
    assert sigma > alone
    assert 2.97 <= privacy.epsilon(plan.with_noise(sigma).composed(stats), delta=1e-5, accountant="prv") <= 3.0
    assert privacy.epsilon(plan.with_noise(sigma), delta=1e-5, accountant="prv") < 2.97
    assert privacy.label(plan.composed(stats), "prv") == "prv (Poisson sampling, add/remove; with 2 Gaussian releases)"
    with pytest.raises(ParameterError, match="unreachable"):  # the releases alone spend more than the target
        privacy.calibrate_noise_multiplier(plan.composed(privacy.SampledGaussianEvent.gaussian(noise_multiplier=0.5)),
                                           target_epsilon=1.0, delta=1e-5, accountant="rdp")


def test_compositions_that_cannot_be_bounded_are_refused() -> None:
    shards = privacy.SampledGaussianEvent(1.0, 0.01, 10, sampling="shards", adjacency="replace-one")
    with pytest.raises(privacy.UnsupportedEvent, match="composition is supported"):
        privacy.epsilon(shards.composed(privacy.SampledGaussianEvent.gaussian(noise_multiplier=2.0,
                                                                             adjacency="replace-one")),
                        delta=1e-5, accountant="rdp")
    with pytest.raises(ParameterError, match="adjacency"):
        privacy.SampledGaussianEvent(1.0, 0.01, 10).composed(privacy.SampledGaussianEvent.gaussian(
            noise_multiplier=2.0, adjacency="replace-one"))
    with pytest.raises(ParameterError, match="noise_multiplier"):
        privacy.SampledGaussianEvent(1.0, 0.01, 10).composed(privacy.SampledGaussianEvent(None, 1.0, 1))
