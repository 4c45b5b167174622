"""DP-GAN: a class-conditional GAN whose discriminator is trained with DP-SGD.

Only the discriminator D sees real (private) images. The generator G learns from D's scores of
generated images alone, so G's updates are post-processing of D's DP-SGD iterates (Xie et al.
2018, "Differentially private GAN"; Torkzadehmahani et al. 2019, DP-CGAN). The privacy cost is
that of D's steps: the sampled Gaussian mechanism with Poisson rate ``sample_rate = B / N``,
composed over D's steps (:mod:`dpnb.privacy`).

One D step (:func:`discriminator_step`): each real example ``(x_i, y_i)`` of the Poisson batch
is paired with one fresh fake ``G(z_i, y_i)``. The pair's whole loss gets one per-example gradient
(``torch.func.vmap`` over ``torch.func.grad``), clipped to ``max_grad_norm``:

* ``"gan"``: softplus(-D(x_i)) + softplus(D(fake_i)), the non-saturating GAN (Goodfellow et al. 2014);
* ``"wgan"``: D(fake_i) - D(x_i), with D's weights clipped to [-0.01, 0.01] after each step
  (Arjovsky et al. 2017, Alg. 1; clipping weights is post-processing);
* ``"wgan-gp"``: the WGAN loss plus ``gp_weight * (|grad_x D(x_hat_i)| - 1)^2`` at
  ``x_hat_i = t x_i + (1 - t) fake_i`` (Gulrajani et al. 2017, Alg. 1), plus 0.001 D(x_i)^2 (the
  "epsilon penalty" of Karras et al. 2018 that GS-WGAN also uses). The penalty reads the private
  x_i. Here it is computed inside example i's loss, so it is inside the clipped per-example
  gradient. Adding it to the batch loss after clipping would leave its gradient unbounded.

Removing one real example removes one clipped pair gradient, so the sensitivity is
``max_grad_norm`` as in DP-SGD (add/remove adjacency), and Gaussian noise of std
``noise_multiplier * max_grad_norm`` is added to the sum, divided by the expected batch size.

Example::

    >>> import torch
    >>> G, D = Generator(z_dim=8, width=8), Discriminator(width=8)
    >>> x = G(torch.randn(4, 8), torch.tensor([0, 1, 2, 3]))
    >>> x.shape, bool(x.min() >= 0), D(x, torch.tensor([0, 1, 2, 3])).shape
    (torch.Size([4, 1, 28, 28]), True, torch.Size([4]))
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import TensorDataset

from dpnb import dpsgd, privacy
from dpnb.devices import select_device
from dpnb.layers import EMA
from dpnb.params import check_budget, check_choice, check_int, check_number

LOSSES = ("gan", "wgan", "wgan-gp")
WGAN_WEIGHT_CLIP = 0.01


class Generator(nn.Module):
    """Class-conditional DCGAN-style generator for 28x28 images in [0, 1].

    (z, label embedding) -> 7x7 maps -> transposed convolutions to 14x14 and 28x28, sigmoid output.
    GroupNorm, not BatchNorm, so that no statistic mixes the samples of a batch (GS-WGAN
    sanitises each sample's gradient separately).
    """

    def __init__(self, *, z_dim: int = 32, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.z_dim, self.num_classes = z_dim, num_classes
        self.embed = nn.Embedding(num_classes, z_dim)
        self.fc = nn.Sequential(nn.Linear(2 * z_dim, 2 * width * 7 * 7), nn.ReLU())
        self.net = nn.Sequential(
            nn.Unflatten(1, (2 * width, 7, 7)),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),
            nn.GroupNorm(min(8, width), width), nn.ReLU(),
            nn.ConvTranspose2d(width, 1, 4, stride=2, padding=1), nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(torch.cat([z, self.embed(y)], 1)))


class _Projection(nn.Module):
    """The projection head shared by both discriminators (Miyato & Koyama 2018):
    ``D(x, y) = w . h(x) + embed(y) . h(x)`` on the features ``h`` of ``features`` (``dim`` of them)."""

    def __init__(self, features: nn.Module, *, dim: int, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.out = nn.Linear(dim, 1)
        self.embed = nn.Embedding(num_classes, dim)
        nn.init.normal_(self.embed.weight, std=0.01)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return self.out(h).squeeze(1) + (self.embed(y) * h).sum(1)


class Discriminator(_Projection):
    """Projection discriminator (Miyato & Koyama 2018) with two strided convolutions, LeakyReLU, no norm.

    ``D(x, y) = w . h(x) + embed(y) . h(x)``; no BatchNorm (it would mix examples, which DP-SGD
    and the gradient penalty both forbid), no in-place activations (Opacus/torch.func friendly).
    """

    def __init__(self, *, num_classes: int = 10, width: int = 32) -> None:
        features = nn.Sequential(
            nn.Conv2d(1, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Flatten(),
        )
        super().__init__(features, dim=2 * width * 7 * 7, num_classes=num_classes)


class LatentGenerator(nn.Module):
    """Class-conditional MLP generator of ``out_dim``-dimensional latent codes (no output squashing).

    For generators trained in the latent space of a public autoencoder (:mod:`dpnb.latent`): the
    public decoder turns its codes into images. (z, label embedding) -> two hidden layers -> code.
    """

    def __init__(self, *, z_dim: int = 32, num_classes: int = 10, width: int = 128, out_dim: int = 64) -> None:
        super().__init__()
        self.z_dim, self.num_classes = z_dim, num_classes
        self.embed = nn.Embedding(num_classes, z_dim)
        self.net = nn.Sequential(nn.Linear(2 * z_dim, width), nn.LeakyReLU(0.2), nn.Linear(width, width),
                                 nn.LeakyReLU(0.2), nn.Linear(width, out_dim))

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, self.embed(y)], 1))


class LatentDiscriminator(_Projection):
    """Projection discriminator on ``in_dim``-dimensional codes: the MLP twin of :class:`Discriminator`."""

    def __init__(self, *, num_classes: int = 10, width: int = 128, in_dim: int = 64) -> None:
        features = nn.Sequential(nn.Linear(in_dim, width), nn.LeakyReLU(0.2), nn.Linear(width, width),
                                 nn.LeakyReLU(0.2))
        super().__init__(features, dim=width, num_classes=num_classes)


def make_generator(*, z_dim: int, num_classes: int, width: int, latent_dim: int | None = None) -> nn.Module:
    """The image generator (28x28 in [0, 1]) or, with ``latent_dim``, the latent :class:`LatentGenerator`."""
    if latent_dim is None:
        return Generator(z_dim=z_dim, num_classes=num_classes, width=width)
    return LatentGenerator(z_dim=z_dim, num_classes=num_classes, width=width,
                           out_dim=check_int("latent_dim", latent_dim, low=1))


def make_discriminator(*, num_classes: int, width: int, latent_dim: int | None = None) -> nn.Module:
    """The image discriminator or, with ``latent_dim``, the latent :class:`LatentDiscriminator`."""
    if latent_dim is None:
        return Discriminator(num_classes=num_classes, width=width)
    return LatentDiscriminator(num_classes=num_classes, width=width, in_dim=check_int("latent_dim", latent_dim, low=1))


def pair_loss(D: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
              fake: torch.Tensor, t: torch.Tensor, *, loss: str, gp_weight: float = 10.0) -> torch.Tensor:
    """Discriminator loss of one (real, fake) pair, unbatched: ``x`` and ``fake`` are (C, H, W) images or
    (d,) codes, ``y`` a scalar.

    See the module docstring for the three losses; ``t`` in [0, 1] places the gradient-penalty point.
    """
    def d(img: torch.Tensor) -> torch.Tensor:
        return functional_call(D, params, (img[None], y[None]))[0]

    d_real, d_fake = d(x), d(fake)
    if loss == "gan":
        return F.softplus(-d_real) + F.softplus(d_fake)
    out = d_fake - d_real
    if loss == "wgan-gp":
        x_hat = t * x + (1 - t) * fake
        g = grad(d)(x_hat)
        out = out + gp_weight * (torch.sqrt((g ** 2).sum() + 1e-12) - 1) ** 2 + 1e-3 * d_real ** 2
    return out


def per_example_gradients(D: nn.Module, x: torch.Tensor, y: torch.Tensor, fake: torch.Tensor, t: torch.Tensor,
                          *, loss: str, gp_weight: float = 10.0) -> dict[str, torch.Tensor]:
    """``{name: (B, *param.shape)}``: the gradient of each pair's :func:`pair_loss`, one row per real example."""
    params = {k: v.detach() for k, v in D.named_parameters()}

    def f(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor, fi: torch.Tensor,
          ti: torch.Tensor) -> torch.Tensor:
        return pair_loss(D, p, xi, yi, fi, ti, loss=loss, gp_weight=gp_weight)

    return vmap(grad(f), in_dims=(None, 0, 0, 0, 0))(params, x, y, fake, t)


def clip_and_noise(grads: dict[str, torch.Tensor], *, max_grad_norm: float, noise_multiplier: float,
                   expected_batch_size: float, generator: torch.Generator | None = None
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """DP-SGD's aggregation (Abadi et al. 2016, Alg. 1) by the core's stages (:mod:`dpnb.dpsgd`): clip
    each row to ``max_grad_norm`` and sum, add N(0, (noise_multiplier * max_grad_norm)^2) per
    coordinate, divide by the expected batch size.

    Returns the noisy mean gradient and the per-example norms before clipping.
    """
    sums, norms = dpsgd.clip_and_sum(grads, max_grad_norm=max_grad_norm)
    std = noise_multiplier * max_grad_norm
    return {k: dpsgd.scale(dpsgd.add_noise(v, std=std, generator=generator), expected_batch_size=expected_batch_size)
            for k, v in sums.items()}, norms


@dataclass(frozen=True)
class GANConfig:
    """Hyper-parameters of a DP-GAN run; ``steps`` counts discriminator steps (the private ones)."""

    loss: str = "gan"
    steps: int = 1000
    batch_size: int = 128  # expected real examples per D step (Poisson sampling when dp=True)
    generator_every: int = 1  # one G step after this many D steps (WGAN: n_critic)
    lr_d: float = 2e-4
    lr_g: float = 2e-4
    dp: bool = True
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    accountant: str = "prv"
    gp_weight: float = 10.0
    z_dim: int = 32
    width: int = 32
    ema_decay: float = 0.99  # the samples come from an exponential moving average of G (post-processing)
    num_classes: int = 10  # public metadata of the dataset (dpnb.data.NUM_CLASSES), never read off the labels
    latent_dim: int | None = None  # None: 28x28 images; d: codes of a public autoencoder (dpnb.latent), MLP nets
    seed: int = 0
    log_every: int = 50
    device: str = "auto"  # auto (CUDA when present), cpu or cuda

    def validated(self, dataset_size: int) -> "GANConfig":
        check_choice("loss", self.loss, LOSSES)
        check_int("num_classes", self.num_classes, low=2)
        check_int("steps", self.steps, low=1)
        check_int("batch_size", self.batch_size, low=1, high=dataset_size)
        check_int("generator_every", self.generator_every, low=1, high=self.steps)
        check_number("lr_d", self.lr_d, low=0, low_open=True)
        check_number("lr_g", self.lr_g, low=0, low_open=True)
        check_number("max_grad_norm", self.max_grad_norm, low=0, low_open=True)
        check_number("delta", self.delta, low=0, high=1, low_open=True, high_open=True)
        check_choice("accountant", self.accountant, privacy.ACCOUNTANTS)
        check_number("gp_weight", self.gp_weight, low=0)
        check_int("z_dim", self.z_dim, low=1)
        check_int("width", self.width, low=1)
        check_number("ema_decay", self.ema_decay, low=0, high=1, high_open=True)
        check_int("log_every", self.log_every, low=1)
        select_device(self.device)
        check_budget(dp=self.dp, noise_multiplier=self.noise_multiplier, target_epsilon=self.target_epsilon)
        return self


@dataclass
class GANResult:
    generator: nn.Module  # the EMA generator: what is released and sampled
    discriminator: nn.Module
    config: GANConfig
    history: pd.DataFrame
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    steps: int = 0
    epsilon: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        c = self.config
        return dict(loss=c.loss, dp=c.dp, steps=self.steps, batch_size=c.batch_size,
                    noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate,
                    max_grad_norm=c.max_grad_norm if c.dp else None, delta=c.delta if c.dp else None,
                    epsilon=self.epsilon.get(c.accountant), epsilon_prv=self.epsilon.get("prv"),
                    epsilon_rdp=self.epsilon.get("rdp"), seconds=self.seconds)


def discriminator_step(D: nn.Module, G: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *,
                       config: GANConfig, core: dpsgd.DPSGD | None, generator: torch.Generator,
                       want_loss: bool = True) -> float:
    """One (DP-)SGD step of D on the real batch ``(x, y)`` paired with fresh fakes.

    With ``core`` (DP runs), the per-pair gradients go through the core's stages: clip and sum,
    add noise, scale by the expected batch size; the core counts the step.

    Returns the mean pair loss before the step (for DP runs only when ``want_loss``, else NaN:
    it costs an extra forward pass; it is a diagnostic computed on private data and is not released;
    for WGAN-GP under DP it leaves out the penalty, which would need another backward pass).
    """
    n, dev = len(y), y.device
    with torch.no_grad():
        fake = G(torch.randn(n, config.z_dim, generator=generator).to(dev), y)
    t = torch.rand(n, *([1] * (x.dim() - 1)), generator=generator).to(dev)  # images (n,1,1,1), codes (n,1)
    params = dict(D.named_parameters())
    if core is not None:
        if n:
            grads = per_example_gradients(D, x, y, fake, t, loss=config.loss, gp_weight=config.gp_weight)
        else:  # an empty Poisson batch is still a step: the noise alone
            grads = {k: torch.zeros((0, *p.shape), device=dev) for k, p in params.items()}
        sums, _ = dpsgd.clip_and_sum(grads, max_grad_norm=core.max_grad_norm)  # type: ignore[union-attr]
        noisy = core.privatize(sums)  # type: ignore[union-attr]
        for k, p in params.items():
            p.grad = noisy[k]
        with torch.no_grad():
            loss_value = float(vmap(lambda *a: pair_loss(D, {k: v.detach() for k, v in params.items()}, *a,
                                                         loss="gan" if config.loss == "gan" else "wgan"))(
                x, y, fake, t).mean()) if n and want_loss else float("nan")
    else:
        losses = vmap(lambda *a: pair_loss(D, params, *a, loss=config.loss, gp_weight=config.gp_weight))(x, y, fake, t)
        opt.zero_grad(set_to_none=True)
        losses.mean().backward()
        loss_value = float(losses.detach().mean())
    opt.step()
    if config.loss == "wgan":
        with torch.no_grad():
            for p in D.parameters():
                p.clamp_(-WGAN_WEIGHT_CLIP, WGAN_WEIGHT_CLIP)
    return loss_value


def generator_loss(D: nn.Module, fake: torch.Tensor, y: torch.Tensor, *, loss: str) -> torch.Tensor:
    """Non-saturating ``softplus(-D)`` for the GAN, ``-D`` for the WGANs; a mean over the batch."""
    s = D(fake, y)
    return F.softplus(-s).mean() if loss == "gan" else -s.mean()


def train_gan(data: TensorDataset, config: GANConfig, *, progress: bool = True) -> GANResult:
    """Train a conditional GAN on ``data`` (images in [0, 1], integer labels); D with DP-SGD when ``config.dp``.

    Real batches are Poisson samples at the core's rate ``1/ceil(N / batch_size)`` when ``dp`` (what
    the accountant assumes; :func:`dpnb.dpsgd.poisson_rate`), shuffled fixed-size batches otherwise.
    σ is ``noise_multiplier`` or calibrated to ``target_epsilon`` for ``steps`` D steps with ``accountant``.
    """
    from dpnb.progress import progress as progress_bar
    x_all, y_all = data.tensors
    N = len(y_all)
    config = config.validated(N)
    device = select_device(config.device)
    x_all, y_all = x_all.to(device), y_all.to(device)
    torch.manual_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed)  # on the CPU: the same draws on every device
    num_classes = config.num_classes
    G = make_generator(z_dim=config.z_dim, num_classes=num_classes, width=config.width,
                       latent_dim=config.latent_dim).to(device)
    D = make_discriminator(num_classes=num_classes, width=config.width, latent_dim=config.latent_dim).to(device)
    ema = EMA(G, decay=config.ema_decay)
    opt_d = torch.optim.Adam(D.parameters(), lr=config.lr_d, betas=(0.5, 0.9))
    opt_g = torch.optim.Adam(G.parameters(), lr=config.lr_g, betas=(0.5, 0.9))
    core = None
    if config.dp:  # sampling rate, sigma and the step count: the DP-SGD core's
        core = dpsgd.DPSGD(dataset_size=N, batch_size=config.batch_size, steps=config.steps,
                           max_grad_norm=config.max_grad_norm, noise_multiplier=config.noise_multiplier,
                           target_epsilon=config.target_epsilon, delta=config.delta, accountant=config.accountant,
                           generator=g, device=device)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    perm = torch.randperm(N, generator=g)
    pos = 0
    d_losses: list[float] = []
    g_loss = math.nan
    for step in progress_bar(range(1, config.steps + 1), desc=f"{config.loss} {'DP' if config.dp else 'non-private'}",
                     enable=progress, mininterval=5):
        if core is not None:
            idx = core.sample()  # stage 1: Poisson sampling
        else:
            if pos + config.batch_size > N:
                perm, pos = torch.randperm(N, generator=g), 0
            idx, pos = perm[pos:pos + config.batch_size].to(device), pos + config.batch_size
        d_losses.append(discriminator_step(D, G, opt_d, x_all[idx], y_all[idx], config=config, core=core,
                                           generator=g, want_loss=step % config.log_every == 0))
        if step % config.generator_every == 0:
            for p in D.parameters():
                p.requires_grad_(False)
            y = torch.randint(0, num_classes, (config.batch_size,), generator=g).to(device)
            fake = G(torch.randn(config.batch_size, config.z_dim, generator=g).to(device), y)
            opt_g.zero_grad(set_to_none=True)
            loss_g = generator_loss(D, fake, y, loss=config.loss)
            loss_g.backward()
            opt_g.step()
            ema.update(G)
            g_loss = float(loss_g.detach())
            for p in D.parameters():
                p.requires_grad_(True)
        if step % config.log_every == 0 or step == config.steps:
            rows.append(dict(step=step, d_loss=float(pd.Series(d_losses).mean()), g_loss=g_loss,  # NaNs skipped
                             seconds=time.perf_counter() - t0))
            d_losses = []
    eps: dict[str, float] = {}
    if core is not None:
        eps = {k.removeprefix("epsilon_"): v for k, v in core.epsilons().items()}
    history = pd.DataFrame(rows).assign(loss=config.loss, dp=config.dp)
    return GANResult(generator=ema.average.cpu(), discriminator=D.cpu(), config=config, history=history,
                     noise_multiplier=core.noise_multiplier if core else None,
                     sample_rate=core.sample_rate if core else None, steps=config.steps, epsilon=eps,
                     seconds=time.perf_counter() - t0)


@torch.no_grad()
def sample(G: nn.Module, *, n: int, num_classes: int = 10, seed: int = 0) -> TensorDataset:
    """``n`` labelled samples from ``G``, classes in equal shares (labels cycle 0, 1, ..., 9, 0, ...)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(check_int("n", n, low=1)) % num_classes
    z_dim = G.z_dim  # type: ignore[attr-defined]
    G.eval()
    x = torch.cat([G(torch.randn(len(b), z_dim, generator=g), b) for b in y.split(1000)])
    return TensorDataset(x, y)
