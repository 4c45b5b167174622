r"""Auditing DP-SGD: membership inference and the one-run lower bound on ε.

An accountant gives an *upper* bound on ε: no attack on the trained model can do better than
(ε, δ)-DP allows. An audit runs an attack and turns its success into a *lower* bound: evidence
that the algorithm as implemented is *not* (ε', δ)-DP for any ε' below it. A correct
implementation keeps the lower bound below the accounted ε; a broken one (noise or clipping
missing) can push it above, and that is how an audit catches bugs. It can never certify that an
implementation is correct.

Three pieces, each a pure function of scores and labels, so that they can be tested against
independent references:

* **the hypothesis-testing view** (:func:`dp_tpr_bound`): under (ε, δ)-DP every membership test
  with false-positive rate α has true-positive rate at most
  :math:`\min\{1,\ e^\varepsilon\alpha + \delta,\ 1 - e^{-\varepsilon}(1 - \delta - \alpha)\}`
  (Kairouz, Oh & Viswanath 2015, Sec. 2; Dong, Roth & Su 2022, Sec. 2);
* **membership-inference attacks and their ROC curves** (:func:`roc`, :func:`tpr_at_fpr`,
  :func:`loss_scores`, :func:`lira_scores`): the loss threshold of Yeom et al. (CSF 2018) and the
  likelihood-ratio attack of Carlini et al. (S&P 2022, Sec. IV) with per-example Gaussians fitted to
  reference models' logit-scaled confidences;
* **the one-run audit** (:func:`p_value`, :func:`epsilon_lower_bound`, :func:`one_run_audit`) of
  Steinke, Nasr & Jagielski (NeurIPS 2023, the statistic of its Appendix D): m canaries, each included
  independently with probability 1/2, one training run, guesses on the highest and lowest scores.

The training loop that plants the canaries, :func:`train_small`, runs the book's own DP-SGD
stages (:mod:`dpnb.dpsgd`), and can run them broken (``bug="no-noise"`` or ``"no-clipping"``) while
still claiming the ε of the correct run: the audit must see through that.

Example::

    >>> round(epsilon_lower_bound(canaries=1000, guesses=100, correct=100, delta=1e-5), 2)
    3.47
    >>> round(float(dp_tpr_bound(0.01, epsilon=1.0, delta=1e-5)), 4)
    0.0272
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import nn

from dpnb import privacy
from dpnb.dpsgd import DPSGD, add_noise, scale
from dpnb.params import ParameterError, check_choice, check_int, check_number
from dpnb.search import largest

__all__ = ["dp_tpr_bound", "roc", "auc", "tpr_at_fpr", "loss_scores", "logit_confidence", "lira_scores",
           "reference_splits", "p_value", "epsilon_lower_bound", "one_run_audit", "AuditResult", "BUGS", "CANARIES",
           "CanaryRun", "train_small", "dirac_coordinates", "input_canaries", "frame_pixels",
           "Settings", "membership_inference", "canary_audit", "canary_audits"]

BUGS = ("none", "no-noise", "no-clipping")
CANARIES = ("gradient", "input")


# --- the hypothesis-testing view -------------------------------------------------------------------------

def dp_tpr_bound(fpr: float | np.ndarray, *, epsilon: float, delta: float) -> np.ndarray:
    r"""The most true positives any membership test can have at false-positive rate ``fpr`` under (ε, δ)-DP.

    .. math:: \mathrm{TPR} \le \min\{1,\ e^\varepsilon\,\mathrm{FPR} + \delta,\
              1 - e^{-\varepsilon}(1 - \delta - \mathrm{FPR})\}

    (Kairouz, Oh & Viswanath, ICML 2015, Sec. 2: the two linear constraints that (ε, δ)-DP puts on
    the type I and type II errors of a test of "in" against "out").

        >>> [round(float(t), 4) for t in dp_tpr_bound(np.array([0.001, 0.1, 0.9]), epsilon=1.0, delta=0.0)]
        [0.0027, 0.2718, 0.9632]
    """
    eps = check_number("epsilon", epsilon, low=0)
    d = check_number("delta", delta, low=0, high=1)
    a = np.clip(np.asarray(fpr, dtype=float), 0.0, 1.0)
    return np.minimum.reduce([np.ones_like(a), math.exp(eps) * a + d, 1 - math.exp(-eps) * (1 - d - a)])


# --- ROC curves of membership scores ---------------------------------------------------------------------

def roc(scores: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) of the test "member if score ≥ t" over every threshold t, from (0, 0) to (1, 1).

    Tied scores move together (one point per distinct score), as scikit-learn's ``roc_curve``.

        >>> fpr, tpr = roc(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 0, 1, 0]))
        >>> fpr.tolist(), tpr.tolist()
        ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
    """
    s, m = np.asarray(scores, dtype=float), np.asarray(members).astype(bool)
    if s.shape != m.shape or s.ndim != 1:
        raise ParameterError(f"scores and members must be 1-d of the same length, got {s.shape} and {m.shape}")
    if m.all() or not m.any():
        raise ParameterError("members must contain both members and non-members")
    if not np.isfinite(s).all():
        raise ParameterError("scores must be finite")
    order = np.argsort(-s, kind="stable")
    s, m = s[order], m[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # the last index of each run of tied scores
    tp, fp = np.cumsum(m)[last], np.cumsum(~m)[last]
    return np.r_[0.0, fp / (~m).sum()], np.r_[0.0, tp / m.sum()]


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under the ROC curve (trapezoids): 0.5 for guessing, 1 for a perfect attack."""
    return float(np.trapezoid(tpr, fpr))


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, *, at: float) -> float:
    """The highest TPR among thresholds whose FPR is at most ``at`` (Carlini et al. 2022, Sec. III-B).

    With n non-members the smallest FPR a threshold can show is 1/n: a TPR at FPR 0.1% needs
    at least 1,000 non-members to mean anything.
    """
    at = check_number("at", at, low=0, high=1)
    ok = fpr <= at + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def loss_scores(losses: np.ndarray) -> np.ndarray:
    """The loss-threshold attack (Yeom et al., CSF 2018, Sec. 3.2): a lower loss means "member"."""
    return -np.asarray(losses, dtype=float)


def logit_confidence(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    r"""Carlini et al.'s statistic :math:`\phi = \log p_y - \log(1 - p_y)`, computed stably from logits.

    ``logits`` may carry leading dimensions, e.g. (models, examples, classes).
    """
    z = logits.double()
    correct = z.gather(-1, labels.expand(*z.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    others = z.scatter(-1, labels.expand(*z.shape[:-1]).unsqueeze(-1), -math.inf).logsumexp(-1)
    return (correct - others).numpy()


def reference_splits(*, examples: int, models: int, seed: int) -> np.ndarray:
    """(models, examples) membership masks in complementary pairs: each example is in exactly half of the
    models, so that :func:`lira_scores` has "in" and "out" values for every one (``models`` even).

        >>> reference_splits(examples=4, models=2, seed=0).sum(0).tolist()
        [1, 1, 1, 1]
    """
    n = check_int("examples", examples, low=2)
    r = check_int("models", models, low=2)
    if r % 2:
        raise ParameterError(f"models must be an even number >= 2, got {r}")
    rng = np.random.default_rng(seed)
    halves = np.stack([rng.permutation(n) < n // 2 for _ in range(r // 2)])
    return np.stack([halves, ~halves], axis=1).reshape(r, n)


def lira_scores(target: np.ndarray, reference: np.ndarray, reference_in: np.ndarray, *,
                global_variance: bool = True) -> np.ndarray:
    r"""Online likelihood-ratio attack (Carlini et al., S&P 2022, Alg. 1).

    ``target``: the target model's statistic φ for each of n examples; ``reference``: (R, n) the
    same statistic from R reference models; ``reference_in``: (R, n) whether example j was in
    reference model r's training set. For each example a Gaussian is fitted to its "in" and its
    "out" values; the score is :math:`\log \mathcal N(\phi; \mu_\text{in}, \sigma^2_\text{in}) -
    \log \mathcal N(\phi; \mu_\text{out}, \sigma^2_\text{out})`. With few reference models one
    variance per side, pooled over all examples, is steadier (their Sec. VI-A, ``global_variance``).
    """
    t, ref, inn = np.asarray(target, float), np.asarray(reference, float), np.asarray(reference_in, bool)
    if ref.shape != inn.shape or ref.ndim != 2 or ref.shape[1] != t.shape[0]:
        raise ParameterError(f"reference and reference_in must be (R, n) with n = {t.shape[0]}, "
                             f"got {ref.shape} and {inn.shape}")
    n_in, n_out = inn.sum(0), (~inn).sum(0)
    if (n_in < 1).any() or (n_out < 1).any():
        raise ParameterError("every example needs at least one reference model with it and one without it")
    mu_in = np.where(inn, ref, 0).sum(0) / n_in
    mu_out = np.where(~inn, ref, 0).sum(0) / n_out
    dev_in, dev_out = np.where(inn, ref - mu_in, 0) ** 2, np.where(~inn, ref - mu_out, 0) ** 2
    if global_variance:
        var_in = np.full_like(t, dev_in.sum() / max(inn.sum() - 1, 1))
        var_out = np.full_like(t, dev_out.sum() / max((~inn).sum() - 1, 1))
    else:
        var_in, var_out = dev_in.sum(0) / np.maximum(n_in - 1, 1), dev_out.sum(0) / np.maximum(n_out - 1, 1)
    var_in, var_out = np.maximum(var_in, 1e-8), np.maximum(var_out, 1e-8)
    return (stats.norm.logpdf(t, mu_in, np.sqrt(var_in)) - stats.norm.logpdf(t, mu_out, np.sqrt(var_out)))


# --- the one-run bound (Steinke, Nasr & Jagielski 2023) ----------------------------------------------------

def _check_counts(canaries: int, guesses: int, correct: int) -> tuple[int, int, int]:
    m = check_int("canaries", canaries, low=1)
    r = check_int("guesses", guesses, low=0, high=m)
    v = check_int("correct", correct, low=0, high=r)
    return m, r, v


def p_value(*, canaries: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    r"""Probability of at least ``correct`` right guesses out of ``guesses`` if the algorithm were (ε, δ)-DP.

    Steinke, Nasr & Jagielski (NeurIPS 2023), the statistic of their Appendix D: with
    :math:`q = e^\varepsilon/(1+e^\varepsilon)` and :math:`W \sim \mathrm{Bin}(r, q)`,

    .. math:: p = P[W \ge v] + 2 m \delta \max_{1 \le i \le v} \tfrac1i P[v - i \le W < v],

    capped at 1. Each of the m canaries is in the training set independently with probability 1/2;
    r is the number of guesses (abstentions excluded), v the number of right ones.

        >>> round(p_value(canaries=1000, guesses=100, correct=100, epsilon=3.0, delta=0.0), 5)
        0.00776
    """
    m, r, v = _check_counts(canaries, guesses, correct)
    eps = check_number("epsilon", epsilon, low=0)
    d = check_number("delta", delta, low=0, high=1)
    if v == 0:
        return 1.0
    q = 1 / (1 + math.exp(-eps))
    tail = float(stats.binom.sf(v - 1, r, q))
    below = np.cumsum(stats.binom.pmf(v - np.arange(1, v + 1), r, q))  # P[v - i <= W < v], i = 1..v
    return min(tail + 2 * m * d * float((below / np.arange(1, v + 1)).max()), 1.0)


def epsilon_lower_bound(*, canaries: int, guesses: int, correct: int, delta: float,
                        confidence: float = 0.95, epsilon_max: float = 100.0) -> float:
    """The largest ε whose :func:`p_value` is below ``1 - confidence``: the audit's lower bound.

    Found by doubling, then bisection to 1e-6 (:func:`dpnb.search.largest`; the p-value grows with
    ε). 0 when even ε = 0 cannot be rejected. Agrees with privacy meter's ``get_eps_audit`` (tests/test_audit.py).

        >>> round(epsilon_lower_bound(canaries=1000, guesses=100, correct=90, delta=1e-5), 2)
        1.63
    """
    m, r, v = _check_counts(canaries, guesses, correct)
    level = 1 - check_number("confidence", confidence, low=0, high=1, low_open=True, high_open=True)

    def rejected(eps: float) -> bool:
        return p_value(canaries=m, guesses=r, correct=v, epsilon=eps, delta=delta) < level

    if not rejected(0.0):
        return 0.0
    return largest(rejected, low=0.0, first=1.0, limit=epsilon_max, tolerance=1e-6)


@dataclass(frozen=True)
class AuditResult:
    """One audit: the best lower bound over the declared guess counts, and what produced it."""

    epsilon_lower_bound: float
    guesses: int
    correct: int
    canaries: int
    included: int
    confidence: float
    delta: float
    tried: tuple[int, ...] = field(default=())

    def row(self) -> dict[str, Any]:
        return dict(epsilon_lower_bound=self.epsilon_lower_bound, guesses=self.guesses, correct=self.correct,
                    canaries=self.canaries, included=self.included)


def one_run_audit(scores: np.ndarray, included: np.ndarray, *, delta: float, confidence: float = 0.95,
                  guesses: Sequence[int] | None = None) -> AuditResult:
    """Guess "in" for the k highest scores and "out" for the k lowest; the best bound over a grid of k.

    ``included[i]`` says whether canary i was in the training set (drawn with probability 1/2,
    independently of everything else). Each k in ``guesses`` (total guesses r = 2k; default: about
    ten values from 5 to m/2) is one test; trying G of them and keeping the best is paid for with a
    Bonferroni correction, each test run at level (1 - confidence)/G, so that the reported bound
    holds with the stated confidence (jax_privacy's ``CanaryScoreAuditor`` does the same).
    """
    s, inc = np.asarray(scores, float), np.asarray(included).astype(bool)
    if s.shape != inc.shape or s.ndim != 1 or len(s) < 2:
        raise ParameterError(f"scores and included must be 1-d of the same length >= 2, got {s.shape}, {inc.shape}")
    if not np.isfinite(s).all():
        raise ParameterError("scores must be finite")
    m = len(s)
    if guesses is None:
        guesses = sorted({k for k in np.unique(np.geomspace(5, m // 2, 10).astype(int)) if 1 <= k <= m // 2})
    ks = [check_int("guesses", k, low=1, high=m // 2) for k in guesses]
    conf = check_number("confidence", confidence, low=0, high=1, low_open=True, high_open=True)
    per_test = 1 - (1 - conf) / len(ks)
    order = np.argsort(-s, kind="stable")
    best = None
    for k in ks:
        v = int(inc[order[:k]].sum() + (~inc[order[m - k:]]).sum())
        eps = epsilon_lower_bound(canaries=m, guesses=2 * k, correct=v, delta=delta, confidence=per_test)
        if best is None or eps > best[0]:
            best = (eps, 2 * k, v)
    assert best is not None
    return AuditResult(epsilon_lower_bound=best[0], guesses=best[1], correct=best[2], canaries=m,
                       included=int(inc.sum()), confidence=conf, delta=delta, tried=tuple(ks))


# --- training runs to audit ------------------------------------------------------------------------------

def dirac_coordinates(*, count: int, features: int, num_classes: int, seed: int,
                      allowed: torch.Tensor | None = None) -> torch.Tensor:
    """``count`` distinct coordinates of a linear model's weight matrix (flat index into ``W``, classes × features).

    A *Dirac canary* (Steinke et al. 2023, Sec. 6; Nasr et al. 2023) is a gradient that is zero
    everywhere except at one coordinate. ``allowed`` restricts the features it may sit on (e.g. the
    frame of an MNIST image, which the centred digits leave blank, so that no real gradient
    disturbs the canary's coordinate).
    """
    cols = torch.arange(features) if allowed is None else torch.as_tensor(allowed).long()
    pool = (torch.arange(num_classes)[:, None] * features + cols[None, :]).flatten()
    count = check_int("canaries", count, low=1, high=len(pool))
    g = torch.Generator().manual_seed(seed)
    return pool[torch.randperm(len(pool), generator=g)[:count]]


def input_canaries(*, count: int, shape: Sequence[int], num_classes: int, seed: int, pixels: int = 8,
                   allowed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` black-box canaries: images with ``pixels`` random pixels at 1 (of ``allowed`` ones), the rest 0,
    each with a random label.

    A model can only learn such an image's label by memorising it: an attacker who sees nothing but
    the model's outputs on the canary can tell whether it was trained on.
    """
    count = check_int("canaries", count, low=1)
    size = int(np.prod(shape))
    cols = torch.arange(size) if allowed is None else torch.as_tensor(allowed).long()
    pixels = check_int("pixels", pixels, low=1, high=len(cols))
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(count, size)
    for i in range(count):
        x[i, cols[torch.randperm(len(cols), generator=g)[:pixels]]] = 1.0
    return x.reshape(count, *shape), torch.randint(num_classes, (count,), generator=g)


@dataclass
class CanaryRun:
    """A linear model trained by :func:`train_small`, and the privacy its run claims."""

    model: nn.Linear
    noise_multiplier: float | None
    sample_rate: float | None
    steps: int
    epsilon: float | None  # what the run claims (the correct run's ε, also when a bug is switched on)
    accountant: str
    seconds: float


def train_small(x: torch.Tensor, y: torch.Tensor, *, num_classes: int, epochs: int, batch_size: int, lr: float,
                dp: bool = True, max_grad_norm: float = 1.0, noise_multiplier: float | None = None,
                target_epsilon: float | None = None, delta: float = 1e-5, accountant: str = "prv",
                bug: str = "none", present: torch.Tensor | None = None, dirac: torch.Tensor | None = None,
                dirac_norm: float | None = None, seed: int = 0) -> CanaryRun:
    r"""Train a linear softmax classifier on ``x`` (N, …) with the book's DP-SGD stages, or plain SGD.

    DP-SGD as :mod:`dpnb.dpsgd` runs it: Poisson sampling at q = 1/⌈N'/B⌉, each example's gradient
    clipped to C (closed form, :func:`dpnb.linear.clipped_gradient_sum`), Gaussian noise σC on the
    sum, division by qN', SGD without momentum, so that :math:`w_0 - w_T = \eta\sum_t \tilde g_t`
    and a canary's score is a sum over steps.

    ``present`` (N booleans) marks rows that are slots of left-out canaries: sampled like the
    others, they add nothing. ``dirac`` holds one entry per gradient-canary slot: the flat weight
    coordinate of an included canary, -1 for one left out; N' counts real examples and slots. So
    the sampling rate and the divisor are the same whichever canaries were drawn. A sampled,
    included canary adds ``dirac_norm`` at its coordinate, clipped to C like any example.

    ``bug`` breaks the mechanism on purpose, for the audit to catch: ``"no-noise"`` drops stage 3,
    ``"no-clipping"`` drops stage 2's clipping; the run still *claims* the ε of the correct run.
    Without ``dp`` it is plain minibatch SGD on shuffled batches (no clipping, no noise, no ε).
    """
    from dpnb.linear import clipped_gradient_sum

    x = x.reshape(len(x), -1).float()
    n, d = x.shape
    num_classes = check_int("num_classes", num_classes, low=2)
    epochs = check_int("epochs", epochs, low=1)
    lr = check_number("lr", lr, low=0, low_open=True)
    bug = check_choice("bug", bug, BUGS)
    slots = 0 if dirac is None else len(dirac)
    if present is not None:
        present = torch.as_tensor(present, dtype=torch.bool)
        if present.shape != (n,):
            raise ParameterError(f"present must hold one boolean per example ({n}), got shape {tuple(present.shape)}")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = nn.Linear(d, num_classes)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    t0 = time.perf_counter()
    if not dp:
        if bug != "none" or slots or present is not None:
            raise ParameterError("bug, present and gradient canaries need dp=True")
        b = check_int("batch_size", batch_size, low=1, high=n)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        steps = 0
        for _ in range(epochs):
            for idx in torch.randperm(n, generator=g).split(b):
                opt.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
                steps += 1
        return CanaryRun(model, None, None, steps, None, "", time.perf_counter() - t0)
    core = DPSGD(dataset_size=n + slots, batch_size=batch_size, epochs=epochs, max_grad_norm=max_grad_norm,
                 noise_multiplier=noise_multiplier, target_epsilon=target_epsilon, delta=delta,
                 accountant=accountant, generator=g)
    C = core.max_grad_norm
    clip = math.inf if bug == "no-clipping" else C
    std = 0.0 if bug == "no-noise" else core.noise_multiplier * C
    if slots:
        dirac = torch.as_tensor(dirac).long()
        canary_size = C if dirac_norm is None else check_number("dirac_norm", dirac_norm, low=0, low_open=True)
        canary_value = min(canary_size, clip)  # an example's clipped gradient has norm min(‖g‖, C)
    for _ in range(epochs * core.steps_per_epoch):
        idx = core.sample()                                                           # stage 1
        real, slot = idx[idx < n], idx[idx >= n] - n
        if present is not None:
            real = real[present[real]]
        gw, gb, _ = clipped_gradient_sum(model, x[real], y[real], max_grad_norm=clip)  # stage 2
        if slots:
            hit = dirac[slot]
            hit = hit[hit >= 0]
            gw.view(-1).index_add_(0, hit, torch.full((len(hit),), canary_value))
        sums = {"weight": gw, "bias": gb}
        with torch.no_grad():
            for name, p in (("weight", model.weight), ("bias", model.bias)):
                noisy = add_noise(sums[name], std=std, generator=g)                     # stage 3
                p -= lr * scale(noisy, expected_batch_size=core.expected_batch_size)    # stage 4, then SGD
        core.record_step()
    eps = privacy.epsilon(core.event(), delta=core.delta, accountant=accountant)  # type: ignore[arg-type]
    return CanaryRun(model, core.noise_multiplier, core.sample_rate, core.steps, eps, accountant,
                     time.perf_counter() - t0)


# --- the chapter's experiments ---------------------------------------------------------------------------

def frame_pixels(width: int, *, side: int = 28) -> torch.Tensor:
    """Flat indices of the ``width``-pixel frame of a ``side`` × ``side`` image (MNIST centres its digits
    in the middle 20 × 20, so the outer pixels are almost always blank: public knowledge, not read off
    the private images).

        >>> len(frame_pixels(1)), len(frame_pixels(2))
        (108, 208)
    """
    w = check_int("width", width, low=1, high=side // 2 - 1)
    inner = torch.zeros(side, side, dtype=torch.bool)
    inner[w:side - w, w:side - w] = True
    return torch.nonzero(~inner.flatten()).squeeze(1)


@dataclass(frozen=True)
class Settings:
    """Every setting of the auditing chapter, in one place; :meth:`validated` checks them all.

    The fields are the chapter's ``parameters`` cell (:meth:`from_parameters`): membership
    inference on a pool of MNIST training images, one-run audits with canaries planted in a
    seeded subset of them.
    """

    pool_size: int = 4000                 # membership inference: candidate examples, half of them in each model
    mia_epochs: int = 100
    mia_batch_size: int = 100
    mia_lr: float = 0.5
    reference_models: int = 16            # LiRA's reference models per setting (even)
    targets: int = 3                      # models attacked per setting (seeds of the headline)
    mia_epsilons: tuple[float, ...] = (1.0, 8.0)
    audit_train_size: int = 10_000        # real examples of each audited run
    audit_epochs: int = 10
    audit_batch_size: int = 100
    audit_lr: float = 0.5
    canaries: int = 1000                  # m, each included with probability 1/2
    audit_epsilons: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    bugs: tuple[str, ...] = ("no-noise", "no-clipping")
    canary_pixels: int = 8                # lit pixels of each input canary
    dirac_norm: float = 10.0              # a gradient canary's norm before clipping, in units of C
    seeds: tuple[int, ...] = (0, 1, 2)
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    accountant: str = "prv"
    confidence: float = 0.95
    seed: int = 0
    profile: str = "book"

    @classmethod
    def from_parameters(cls, namespace: dict[str, Any]) -> "Settings":
        """The settings named in a notebook's namespace (its ``parameters`` cell), validated."""
        from dpnb.params import validate

        checked = validate(RULES, namespace)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in checked.items()})

    def validated(self) -> "Settings":
        """A copy with every value checked by :data:`RULES` (one-line :class:`ParameterError` naming it)."""
        from dataclasses import asdict

        from dpnb.params import validate

        checked = validate(RULES, asdict(self))
        return Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in checked.items()})


def _even(name: str, value: Any, done: dict[str, Any]) -> int:
    v = check_int(name, value, low=2, high=256)
    if v % 2:
        raise ParameterError(f"{name} must be an even number in [2, 256], got {v}")
    return v


def _rules() -> dict[str, Any]:
    from dpnb.chapters import PROFILES
    from dpnb.params import Choice, Each, Int, Number, Positive

    return dict(
        pool_size=Int(20, 60_000), mia_epochs=Int(1, 10_000), mia_batch_size=Int(1, high=lambda p: p["pool_size"] // 2),
        mia_lr=Positive(), reference_models=_even, targets=Int(1, high=lambda p: p["reference_models"] + 2),
        mia_epsilons=Each(Positive()), audit_train_size=Int(100, 60_000), audit_epochs=Int(1, 10_000),
        audit_batch_size=Int(1, high=lambda p: p["audit_train_size"]), audit_lr=Positive(),
        canaries=Int(10, len(frame_pixels(1)) * 10), audit_epsilons=Each(Positive()),
        bugs=Each(Choice(BUGS[1:]), empty=True), canary_pixels=Int(1, len(frame_pixels(2))), dirac_norm=Positive(),
        seeds=Each(Int(0)), max_grad_norm=Positive(), delta=Number(0, 1, open="both"),
        accountant=Choice(privacy.ACCOUNTANTS), confidence=Number(0, 1, open="both"), seed=Int(0),
        profile=Choice(PROFILES))


RULES = _rules()  # the checks of every :class:`Settings` field, in order (also the chapter's, :mod:`dpnb.chapters`)


def _predict(model: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x.reshape(len(x), -1).float())


def membership_inference(x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor, *,
                         settings: Settings, epsilon: float | None, num_classes: int = 10,
                         progress: bool = True) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Attack ``settings.targets`` models trained on random halves of the pool (``x``, ``y``).

    ``reference_models + 2`` models are trained in complementary pairs (:func:`reference_splits`),
    all with the same algorithm: plain SGD (``epsilon=None``) or DP-SGD at ``epsilon`` with one σ
    calibrated for all. Each of the first ``targets`` models is attacked with the others as LiRA's
    reference models, and with the loss threshold. Returns (one summary row per target and attack,
    the ROC points of every target and attack).
    """
    from dpnb.progress import progress as bar

    s = settings
    masks = reference_splits(examples=len(x), models=s.reference_models + 2, seed=s.seed)
    sigma, logits, eps_run, accuracies, seconds = None, [], None, [], []
    for k in bar(range(len(masks)), desc=f"models (ε = {epsilon})" if epsilon else "models (non-private)",
                 enable=progress):
        idx = torch.as_tensor(np.nonzero(masks[k])[0])
        run = train_small(x[idx], y[idx], num_classes=num_classes, epochs=s.mia_epochs, batch_size=s.mia_batch_size,
                          lr=s.mia_lr, dp=epsilon is not None, max_grad_norm=s.max_grad_norm,
                          noise_multiplier=sigma, target_epsilon=None if sigma else epsilon, delta=s.delta,
                          accountant=s.accountant, seed=s.seed * 1000 + k)
        sigma, eps_run = run.noise_multiplier, run.epsilon
        logits.append(_predict(run.model, x))
        accuracies.append(float((_predict(run.model, x_test).argmax(1) == y_test).float().mean()))
        seconds.append(run.seconds)
    phi = logit_confidence(torch.stack(logits), y)
    losses = np.stack([nn.functional.cross_entropy(lg, y, reduction="none").numpy() for lg in logits])
    rows, curves = [], []
    for t in range(s.targets):
        refs = [k for k in range(len(masks)) if k != t]
        attacks = {"loss threshold": loss_scores(losses[t]),
                   "LiRA": lira_scores(phi[t], phi[refs], masks[refs])}
        for name, score in attacks.items():
            fpr, tpr = roc(score, masks[t])
            rows.append(dict(attack=name, target=t, epsilon=eps_run, noise_multiplier=sigma, auc=auc(fpr, tpr),
                             tpr_at_0_1=tpr_at_fpr(fpr, tpr, at=0.001), tpr_at_1=tpr_at_fpr(fpr, tpr, at=0.01),
                             test_accuracy=accuracies[t], seconds=seconds[t]))
            curves += [dict(attack=name, target=t, epsilon=eps_run, fpr=f, tpr=v) for f, v in zip(fpr, tpr)]
    return rows, curves


def canary_audit(x: torch.Tensor, y: torch.Tensor, *, settings: Settings, kind: str, noise_multiplier: float,
                 bug: str = "none", seed: int, num_classes: int = 10) -> dict[str, Any]:
    """One training run with ``settings.canaries`` canaries of ``kind`` (``gradient`` or ``input``), each
    included with probability 1/2, and its one-run audit (:func:`one_run_audit`).

    Gradient canaries are Dirac gradients on weights of the 1-pixel image frame (white box: the
    score is the drop of that weight over training, :math:`\\sum_t \\langle w_{t-1} - w_t, g_i \\rangle`
    up to the factor C); input canaries are images of ``canary_pixels`` lit pixels of the 2-pixel
    frame with random labels (black box: the score is the model's logit-scaled confidence in the
    canary's label). Returns one row: the claimed ε and the audited lower bound.
    """
    s = settings
    kind = check_choice("kind", kind, CANARIES)
    rng = np.random.default_rng(seed)
    included = rng.random(s.canaries) < 0.5
    x = x.reshape(len(x), -1).float()
    kw = dict(num_classes=num_classes, epochs=s.audit_epochs, batch_size=s.audit_batch_size, lr=s.audit_lr,
              max_grad_norm=s.max_grad_norm, noise_multiplier=noise_multiplier, delta=s.delta,
              accountant=s.accountant, bug=bug, seed=seed)
    if kind == "gradient":
        coords = dirac_coordinates(count=s.canaries, features=x.shape[1], num_classes=num_classes, seed=seed,
                                   allowed=frame_pixels(1))
        slots = torch.where(torch.as_tensor(included), coords, torch.full_like(coords, -1))
        run = train_small(x, y, dirac=slots, dirac_norm=s.dirac_norm * s.max_grad_norm, **kw)  # type: ignore[arg-type]
        scores = (-run.model.weight.detach().flatten()[coords]).numpy()  # w_0 = 0
    else:
        cx, cy = input_canaries(count=s.canaries, shape=(x.shape[1],), num_classes=num_classes, seed=seed,
                                pixels=s.canary_pixels, allowed=frame_pixels(2))
        present = torch.cat([torch.ones(len(x), dtype=torch.bool), torch.as_tensor(included)])
        run = train_small(torch.cat([x, cx]), torch.cat([y, cy]), present=present, **kw)  # type: ignore[arg-type]
        scores = logit_confidence(_predict(run.model, cx), cy)
    result = one_run_audit(scores, included, delta=s.delta, confidence=s.confidence)
    return dict(canary=kind, bug=bug, seed=seed, noise_multiplier=noise_multiplier, epsilon=run.epsilon,
                steps=run.steps, seconds=run.seconds, **result.row())


def canary_audits(x: torch.Tensor, y: torch.Tensor, *, settings: Settings, num_classes: int = 10,
                  progress: bool = True) -> tuple[pd.DataFrame, privacy.SampledGaussianEvent]:
    """Every audited run of the chapter: each ε of ``audit_epsilons`` × canary kind × (correct run and each
    of ``bugs``) × seed, by :func:`canary_audit`, with one σ per ε calibrated for the planned steps.

    Returns (one row per run, with ``run`` the label "correct" or "bug: ...", and ``caught`` whether its
    lower bound exceeds the ε it claims; the plan: sampling rate and steps, σ unset). The sampling rate
    counts the real examples and every canary slot, as :func:`train_small` does.
    """
    from dpnb.dpsgd import poisson_rate
    from dpnb.progress import progress as bar

    s = settings
    rate, steps_per_epoch = poisson_rate(dataset_size=len(x) + s.canaries, batch_size=s.audit_batch_size)
    plan = privacy.SampledGaussianEvent(None, rate, s.audit_epochs * steps_per_epoch)
    sigmas = {e: privacy.calibrate_noise_multiplier(plan, target_epsilon=e, delta=s.delta,
                                                    accountant=s.accountant)  # type: ignore[arg-type]
              for e in s.audit_epsilons}
    grid = [(e, kind, bug, seed) for e in s.audit_epsilons for kind in CANARIES for bug in ("none", *s.bugs)
            for seed in s.seeds]
    rows = [canary_audit(x, y, settings=s, kind=kind, noise_multiplier=sigmas[e], bug=bug, seed=seed,
                         num_classes=num_classes) for e, kind, bug, seed in bar(grid, desc="audited runs",
                                                                                   enable=progress)]
    df = pd.DataFrame(rows)
    df["run"] = df["bug"].map(lambda b: "correct" if b == "none" else f"bug: {b}")
    df["caught"] = df["epsilon_lower_bound"] > df["epsilon"]
    return df, plan
