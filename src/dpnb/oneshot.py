r"""One-shot private releases: statistics released once by the Gaussian mechanism, then used freely.

DP-SGD pays for every step it takes. A *one-shot* mechanism releases a fixed statistic of the
private data once, with noise calibrated to that statistic's sensitivity; everything built from
the release afterwards (fitting, sampling, training a generator on it) is post-processing and
costs nothing more. Two such statistics, both per class (labels are private too):

* **class Gaussians** (:func:`release_class_gaussians`): for each class the sum of the clipped
  codes :math:`\sum_i z_i`, the sum of their outer products :math:`\sum_i z_i z_i^\top` (its upper
  triangle) and the count. With :math:`\lVert z_i\rVert \le 1` one example moves these by at most
  :math:`\sqrt{\lVert z\rVert^2 + \lVert z z^\top\rVert_F^2 + 1} \le \sqrt 3` in L2 (add/remove
  adjacency; an example is in one class, so the classes together move by the same). From the noisy
  sums come a mean and a covariance per class, and samples. With ``components > 1`` each class is a
  mixture found by DP Lloyd iterations (Su et al., CODASPY 2016) started from samples of the
  first release; every iteration releases noisy per-component sums and counts (sensitivity √2).
* **DP-MERF's mean embedding** (:func:`release_mean_embedding`; Harder, Adamczewski & Park,
  AISTATS 2021, Sec. 3): the per-class sum of random Fourier features
  :math:`\phi(x) = \sqrt{2/D}\,[\cos(W x), \sin(W x)]`, :math:`\lVert\phi(x)\rVert = 1`, and the count
  (sensitivity √2). A generator is then trained, without further privacy cost, to match it
  (:func:`fit_to_embedding`).

**Accounting.** T Gaussian mechanisms with sensitivities Δ_t and a common noise std σ compose
*exactly* to one Gaussian mechanism with sensitivity :math:`\sqrt{\sum_t \Delta_t^2}` (Dong, Roth & Su,
JRSS-B 2022, Cor. 3.3: μ-GDP composes as :math:`\sqrt{\sum_t \mu_t^2}`). :func:`noise_std` therefore
calibrates σ with the exact δ(ε) of one Gaussian mechanism (Balle & Wang, ICML 2018, Thm. 8,
:func:`dpnb.privacy.gaussian_delta`): no subsampling, no RDP conversion, no slack.

Example::

    >>> import torch
    >>> z = torch.randn(600, 4); z = z / z.norm(dim=1, keepdim=True).clamp(min=1)
    >>> y = torch.arange(600) % 3
    >>> rel = release_class_gaussians(z, y, classes=[0, 1, 2], epsilon=10.0, delta=1e-5,
    ...                               generator=torch.Generator().manual_seed(0))
    >>> rel.sensitivity, round(rel.epsilon, 6)
    (1.7320508075688772, 10.0)
    >>> codes, labels = rel.sample(5, generator=torch.Generator().manual_seed(1))
    >>> codes.shape, labels.tolist()
    (torch.Size([15, 4]), [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from dpnb import privacy
from dpnb.params import ParameterError, check_int, check_number
from dpnb.search import largest

__all__ = ["noise_std", "clip_rows", "class_statistics", "ClassGaussians", "release_class_gaussians",
           "rff_frequencies", "rff_features", "MeanEmbedding", "release_mean_embedding", "fit_to_embedding",
           "MERFResult", "train_dp_merf"]

GAUSSIAN_SENSITIVITY = math.sqrt(3.0)  # (sum z, upper triangle of sum z z^T, count), each row of norm <= 1
SUMS_SENSITIVITY = math.sqrt(2.0)  # (sum, count) of rows of norm <= 1


def noise_std(*, epsilon: float, delta: float, sensitivities: Sequence[float]) -> float:
    r"""Noise std σ such that Gaussian releases with L2 sensitivities Δ_1..Δ_T, all at std σ, are (ε, δ)-DP.

    Exactly: the composition is one Gaussian mechanism with sensitivity :math:`\sqrt{\sum\Delta_t^2}`
    (Dong, Roth & Su 2022, Cor. 3.3), whose δ(ε) is Balle & Wang's (2018, Thm. 8). σ is the smallest
    noise multiplier (to 1e-6 relative) with δ(ε) ≤ δ, times that sensitivity.

        >>> s = noise_std(epsilon=1.0, delta=1e-5, sensitivities=[1.0]); round(s, 3)
        3.731
        >>> round(noise_std(epsilon=1.0, delta=1e-5, sensitivities=[1.0] * 4) / s, 4)  # four releases: twice the noise
        2.0
    """
    eps = check_number("epsilon", epsilon, low=0, low_open=True)
    delta = check_number("delta", delta, low=0, high=1, low_open=True, high_open=True)
    if not sensitivities or any(s <= 0 for s in sensitivities):
        raise ParameterError(f"sensitivities must be positive numbers, got {list(sensitivities)}")
    total = math.sqrt(sum(s * s for s in sensitivities))

    def too_little(sigma: float) -> bool:  # δ(ε) still above the target: more noise needed
        return privacy.gaussian_delta(noise_multiplier=sigma, epsilon=eps) > delta

    if not too_little(1e-3):
        return 1e-3 * total
    sigma = largest(too_little, low=1e-3, first=1.0, limit=1e6, tolerance=1e-7)
    return (sigma + 1e-7) * total


def clip_rows(z: torch.Tensor, *, bound: float = 1.0) -> torch.Tensor:
    """Each row of ``z`` scaled to L2 norm at most ``bound`` (rows already inside are unchanged)."""
    bound = check_number("bound", bound, low=0, low_open=True)
    z = z.reshape(len(z), -1).float()
    return z * (bound / z.norm(dim=1, keepdim=True).clamp(min=1e-12)).clamp(max=1.0)


def class_statistics(z: torch.Tensor) -> torch.Tensor:
    """The vector one class releases, noise-free: (Σ z_i, upper triangle of Σ z_i z_iᵀ, n), rows of ``z`` as given.

    Each row contributes a vector of norm √(‖z‖² + ‖z‖⁴ + 1) ≤ √3 when ‖z‖ ≤ 1: the sensitivity the
    release is calibrated for (tested numerically in ``tests/test_latent.py``).
    """
    d = z.shape[1]
    iu = torch.triu_indices(d, d)
    second = (z.T @ z)[iu[0], iu[1]]
    return torch.cat([z.sum(0), second, torch.tensor([float(len(z))])])


@dataclass
class _Gaussian:
    weight: float
    mean: torch.Tensor
    scale: torch.Tensor  # (d, d): covariance = scale @ scale.T


def _gaussian_from(stats: torch.Tensor, d: int, *, floor: float = 1e-6) -> _Gaussian:
    """Mean and covariance from a (noisy) :func:`class_statistics` vector; the covariance is projected
    onto the positive semi-definite matrices (eigenvalues floored) and the count floored at 1."""
    n = max(float(stats[-1]), 1.0)
    mean = stats[:d] / n
    iu = torch.triu_indices(d, d)
    second = torch.zeros(d, d)
    second[iu[0], iu[1]] = stats[d:-1]
    second = second + second.T - torch.diag(second.diagonal())
    cov = second / n - torch.outer(mean, mean)
    vals, vecs = torch.linalg.eigh((cov + cov.T) / 2)
    return _Gaussian(weight=n, mean=mean, scale=vecs * vals.clamp(min=floor).sqrt())


@dataclass
class ClassGaussians:
    """A released class-conditional Gaussian (mixture) model of codes: what :func:`release_class_gaussians` returns."""

    classes: list[int]
    components: dict[int, list[_Gaussian]]
    noise_std: float
    sensitivity: float  # of all releases together (the root of the summed squares)
    epsilon: float
    delta: float
    releases: int
    meta: dict[str, float] = field(default_factory=dict)

    def sample(self, per_class: int, *, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``per_class`` codes of every class, drawn from its mixture (weights ∝ released counts); labels."""
        per_class = check_int("per_class", per_class, low=1)
        codes, labels = [], []
        for c in self.classes:
            comps = self.components[c]
            w = torch.tensor([g.weight for g in comps])
            pick = torch.multinomial(w / w.sum(), per_class, replacement=True, generator=generator)
            out = torch.empty(per_class, len(comps[0].mean))
            for j, g in enumerate(comps):
                m = pick == j
                if m.any():
                    out[m] = g.mean + torch.randn(int(m.sum()), len(g.mean), generator=generator) @ g.scale.T
            codes.append(out)
            labels.append(torch.full((per_class,), c, dtype=torch.long))
        return torch.cat(codes), torch.cat(labels)


def release_class_gaussians(z: torch.Tensor, y: torch.Tensor, *, classes: Sequence[int], epsilon: float | None,
                            delta: float, components: int = 1, iterations: int = 3,
                            generator: torch.Generator | None = None) -> ClassGaussians:
    """Release a Gaussian (``components=1``) or a Gaussian mixture per class of codes ``z`` with norms ≤ 1.

    ``classes`` is public metadata (the label set), never read off ``y``. ``epsilon=None`` releases
    without noise (the non-private reference). See the module docstring for the mechanism; the
    whole release, all classes and iterations, is (ε, δ)-DP under add/remove adjacency.
    """
    z = z.reshape(len(z), -1).float()
    if len(z) != len(y):
        raise ParameterError(f"z and y must have the same length, got {len(z)} and {len(y)}")
    if len(z) and float(z.norm(dim=1).max()) > 1 + 1e-5:
        raise ParameterError("z must have rows of norm at most 1: clip them first (clip_rows)")
    k = check_int("components", components, low=1, high=64)
    iters = check_int("iterations", iterations, low=1, high=100) if k > 1 else 0
    delta = check_number("delta", delta, low=0, high=1, low_open=True, high_open=True)
    sens = [GAUSSIAN_SENSITIVITY] + ([SUMS_SENSITIVITY] * iters + [GAUSSIAN_SENSITIVITY] if k > 1 else [])
    std = 0.0 if epsilon is None else noise_std(epsilon=epsilon, delta=delta, sensitivities=sens)
    d = z.shape[1]

    def noisy(v: torch.Tensor) -> torch.Tensor:
        return v + std * torch.randn(v.shape, generator=generator) if std else v

    out: dict[int, list[_Gaussian]] = {}
    for c in classes:
        zc = z[y == c]
        first = _gaussian_from(noisy(class_statistics(zc)), d)
        if k == 1:
            out[c] = [first]
            continue
        # DP Lloyd: centres start as samples of the first release (post-processing), then each
        # iteration releases noisy per-component sums and counts of the points assigned to it
        centres = first.mean + torch.randn(k, d, generator=generator) @ first.scale.T
        for _ in range(iters):
            assign = torch.cdist(zc, centres).argmin(1) if len(zc) else torch.empty(0, dtype=torch.long)
            new = []
            for j in range(k):
                members = zc[assign == j]
                s = noisy(torch.cat([members.sum(0), torch.tensor([float(len(members))])]))
                new.append(s[:d] / s[d] if s[d] >= 1 else centres[j])  # a near-empty component keeps its centre
            centres = torch.stack(new)
        assign = torch.cdist(zc, centres).argmin(1) if len(zc) else torch.empty(0, dtype=torch.long)
        comps = [_gaussian_from(noisy(class_statistics(zc[assign == j])), d) for j in range(k)]
        kept = [g for g in comps if g.weight >= 2]  # a component the noisy count calls empty is dropped
        out[c] = kept or [first]
    return ClassGaussians(classes=list(classes), components=out, noise_std=std, sensitivity=math.sqrt(sum(
        s * s for s in sens)), epsilon=math.inf if epsilon is None else float(epsilon), delta=delta,
        releases=len(sens))


def rff_frequencies(*, dim: int, features: int, lengthscale: float,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """(features // 2, dim) frequencies W ~ N(0, I/ℓ²): the Gaussian kernel of lengthscale ℓ (Rahimi & Recht 2007)."""
    D = check_int("features", features, low=2)
    ell = check_number("lengthscale", lengthscale, low=0, low_open=True)
    return torch.randn(D // 2, check_int("dim", dim, low=1), generator=generator) / ell


def rff_features(x: torch.Tensor, frequencies: torch.Tensor) -> torch.Tensor:
    r""":math:`\phi(x) = \sqrt{2/D}\,[\cos(Wx), \sin(Wx)]`, rows of norm exactly 1; ``x`` is flattened per row."""
    proj = x.reshape(len(x), frequencies.shape[1]) @ frequencies.T  # (an empty class: zero rows)
    return torch.cat([proj.cos(), proj.sin()], 1) / math.sqrt(frequencies.shape[0])


@dataclass
class MeanEmbedding:
    """DP-MERF's released statistic: a noisy mean embedding per class, with the frequencies that define it."""

    classes: list[int]
    means: torch.Tensor  # (classes, D)
    counts: torch.Tensor  # noisy, floored at 1
    frequencies: torch.Tensor
    noise_std: float
    epsilon: float
    delta: float


def release_mean_embedding(x: torch.Tensor, y: torch.Tensor, *, classes: Sequence[int], frequencies: torch.Tensor,
                           epsilon: float | None, delta: float,
                           generator: torch.Generator | None = None) -> MeanEmbedding:
    """Noisy per-class sums of :func:`rff_features` and noisy counts, one Gaussian release (sensitivity √2)."""
    delta = check_number("delta", delta, low=0, high=1, low_open=True, high_open=True)
    std = 0.0 if epsilon is None else noise_std(epsilon=epsilon, delta=delta, sensitivities=[SUMS_SENSITIVITY])
    means, counts = [], []
    for c in classes:
        phi = rff_features(x[y == c], frequencies)
        s = torch.cat([phi.sum(0), torch.tensor([float(len(phi))])])
        if std:
            s = s + std * torch.randn(s.shape, generator=generator)
        n = max(float(s[-1]), 1.0)
        means.append(s[:-1] / n)
        counts.append(n)
    return MeanEmbedding(classes=list(classes), means=torch.stack(means), counts=torch.tensor(counts),
                         frequencies=frequencies, noise_std=std,
                         epsilon=math.inf if epsilon is None else float(epsilon), delta=delta)


def fit_to_embedding(generator_net: nn.Module, embedding: MeanEmbedding, *, steps: int, batch_size: int = 500,
                     lr: float = 1e-3, z_dim: int, transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     seed: int = 0, progress: bool = True) -> list[float]:
    r"""Train ``generator_net(z, y)`` to match the released embedding (DP-MERF's loss, Harder et al. 2021, Eq. 6):

    :math:`\sum_c \lVert \tilde m_c - \tfrac1n \textstyle\sum_j \phi(G(z_j, c)) \rVert^2`, with class
    indices into ``embedding.classes``. Only the release is read: post-processing, no privacy cost.
    ``transform`` maps the generator's output before the features (e.g. a public decoder). Returns the losses.
    """
    from dpnb.progress import progress as progress_bar

    steps = check_int("steps", steps, low=1)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(generator_net.parameters(), lr=check_number("lr", lr, low=0, low_open=True))
    k = len(embedding.classes)
    per = max(1, check_int("batch_size", batch_size, low=1) // k)
    y = torch.arange(k).repeat_interleave(per)
    losses = []
    for _ in progress_bar(range(steps), desc="DP-MERF generator", enable=progress, mininterval=5):
        out = generator_net(torch.randn(len(y), z_dim, generator=g), y)
        if transform is not None:
            out = transform(out)
        phi = rff_features(out, embedding.frequencies).view(k, per, -1).mean(1)
        loss = ((phi - embedding.means) ** 2).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@dataclass
class MERFResult:
    """A DP-MERF run: the fitted generator (what is released), the one release it read, and its losses."""

    generator: nn.Module
    embedding: MeanEmbedding
    losses: list[float]
    seconds: float


def train_dp_merf(x: torch.Tensor, y: torch.Tensor, *, classes: Sequence[int], generator_net: nn.Module,
                  features: int, lengthscale: float, epsilon: float | None, delta: float, steps: int, z_dim: int,
                  lr: float = 1e-3, batch_size: int = 500, seed: int = 0, progress: bool = True) -> MERFResult:
    """DP-MERF end to end (Harder, Adamczewski & Park, AISTATS 2021, Alg. 1) on rows ``x`` (pixels or codes).

    1. ``features`` random Fourier frequencies for a Gaussian kernel of ``lengthscale``, drawn from
       ``seed`` (public randomness, independent of the data);
    2. the per-class mean embedding and counts, released once (:func:`release_mean_embedding`,
       sensitivity √2, (ε, δ) under add/remove; ``epsilon=None``: no noise);
    3. ``generator_net(z, class index)`` fitted to the release for ``steps`` Adam steps
       (:func:`fit_to_embedding`): post-processing, no further privacy cost.

    Example::

        >>> import torch
        >>> from dpnb.gan import LatentGenerator
        >>> x, y = torch.rand(200, 3), torch.arange(200) % 2
        >>> r = train_dp_merf(x, y, classes=[0, 1], generator_net=LatentGenerator(z_dim=4, num_classes=2,
        ...                   width=8, out_dim=3), features=20, lengthscale=1.0, epsilon=1.0, delta=1e-5,
        ...                   steps=2, z_dim=4, progress=False)
        >>> r.embedding.means.shape, len(r.losses)
        (torch.Size([2, 20]), 2)
    """
    import time

    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    flat = x.reshape(len(x), -1)
    W = rff_frequencies(dim=flat.shape[1], features=features, lengthscale=lengthscale, generator=g)
    emb = release_mean_embedding(flat, y, classes=classes, frequencies=W, epsilon=epsilon, delta=delta, generator=g)
    losses = fit_to_embedding(generator_net, emb, steps=steps, batch_size=batch_size, lr=lr, z_dim=z_dim, seed=seed,
                              progress=progress)
    return MERFResult(generator=generator_net.eval(), embedding=emb, losses=losses, seconds=time.perf_counter() - t0)
