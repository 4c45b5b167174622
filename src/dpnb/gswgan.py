"""GS-WGAN: gradient-sanitized Wasserstein GAN (Chen, Orekondy & Fritz, NeurIPS 2020).

Instead of making the discriminator private, GS-WGAN bounds the only channel through which the
private data reach the generator: the gradient of the discriminator's score with respect to each
generated sample. In the backward pass, that gradient is clipped to norm ``max_grad_norm`` (C) and
Gaussian noise is added (:func:`sanitize`, the paper's Eq. 5):

    g_i  ->  clip(g_i, C) + N(0, (2 C sigma)^2 I)

The factor 2 is the replace-one sensitivity of a clipped vector. Everything upstream of the
sanitiser (the generator's weights) is post-processing.

1. Warm start (:func:`pretrain_discriminators`). The training set is split into K disjoint shards.
   Discriminator k is trained without DP on shard k only, against its own throwaway generator.
2. Training (:func:`train_gswgan`). Each iteration updates one random discriminator on its shard
   (``critic_iters`` WGAN-GP steps). The generator then takes one step, and each of its B samples
   is scored by a discriminator drawn independently and uniformly from the K. A record lives in one shard, so it
   influences a sample's sanitised gradient with probability 1/K.
3. Accounting (:func:`epsilon`). Each sample's gradient is a Gaussian mechanism subsampled with
   ratio ``1/K``, composed ``B x iterations`` times. GS-WGAN analyses it with the
   Wang-Balle-Kasiviswanathan bound for sampling without replacement and replace-one adjacency
   (:func:`dpnb.privacy.wbk_epsilon`); the paper's MNIST defaults (K=1000, sigma=1.07, B=32,
   20,000 iterations, delta=1e-5) give epsilon = 9.99.

The per-sample draw of the discriminator is a deliberate choice. The paper's code scores the
whole batch with one discriminator per iteration. The B sanitised gradients of a step then
depend on the same shard. Composing B independently subsampled mechanisms per step describes
the per-sample draw, which is what dpnb implements. The chapter gives the figure for the
one-discriminator-per-batch design.

Example::

    >>> import torch
    >>> x = torch.ones(3, 4, requires_grad=True)
    >>> (sanitize(x, max_grad_norm=1.0, noise_multiplier=0.0) * 10).sum().backward()
    >>> x.grad.norm(dim=1)   # the loss is a sum here: each row's gradient (norm 20) is clipped to 1
    tensor([1., 1., 1.])
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dpnb import dpsgd, privacy
from dpnb.devices import select_device
from dpnb.gan import make_discriminator, make_generator, pair_loss
from dpnb.layers import EMA
from dpnb.params import ParameterError, check_budget, check_int, check_number

SENSITIVITY = 2.0  # replace-one: two clipped vectors differ by at most 2C


class _Sanitize(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, max_grad_norm: float, noise_multiplier: float,  # type: ignore[override]
                generator: torch.Generator | None) -> torch.Tensor:
        ctx.max_grad_norm, ctx.noise_multiplier, ctx.generator = max_grad_norm, noise_multiplier, generator
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:  # type: ignore[override]
        g = grad_out.reshape(len(grad_out), -1)
        norms = g.norm(dim=1, keepdim=True)
        g = g * (ctx.max_grad_norm / (norms + 1e-12)).clamp(max=1.0)
        if ctx.noise_multiplier > 0:  # the DP-SGD core's noise stage, at the sanitiser's sensitivity 2C
            g = dpsgd.add_noise(g, std=SENSITIVITY * ctx.max_grad_norm * ctx.noise_multiplier, generator=ctx.generator)
        return g.view_as(grad_out), None, None, None


def sanitize(x: torch.Tensor, *, max_grad_norm: float, noise_multiplier: float,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Identity forward; backward clips each sample's gradient (row of ``x``) to ``max_grad_norm``
    and adds N(0, (2 * max_grad_norm * noise_multiplier)^2) per coordinate (Chen et al. 2020, Eq. 5).

    Apply it to the generated samples and make the generator's loss a **sum** over samples, so that each
    row's incoming gradient is that sample's own; divide the generator's gradient by B afterwards.
    """
    check_number("max_grad_norm", max_grad_norm, low=0, low_open=True)
    check_number("noise_multiplier", noise_multiplier, low=0)
    return _Sanitize.apply(x, max_grad_norm, noise_multiplier, generator)


def event(*, noise_multiplier: float | None, num_discriminators: int, batch_size: int,
          iterations: int) -> privacy.SampledGaussianEvent:
    """The record of GS-WGAN's generator training for the accountant.

    ``batch_size * iterations`` Gaussian mechanisms (one per generated sample, each scored by a
    discriminator chosen uniformly among K, hence a shard drawn without replacement at rate 1/K),
    with noise multiplier σ against the sanitiser's sensitivity 2C under replace-one adjacency.
    """
    K = check_int("num_discriminators", num_discriminators, low=2)
    steps = check_int("batch_size", batch_size, low=1) * check_int("iterations", iterations, low=1)
    return privacy.SampledGaussianEvent(noise_multiplier, 1 / K, steps, sampling="shards", adjacency="replace-one")


def epsilon(*, noise_multiplier: float, num_discriminators: int, batch_size: int, iterations: int,
            delta: float) -> dict[str, float]:
    """ε of GS-WGAN's generator training (:func:`event`) under two analyses.

    ``wbk``: sampling without replacement, replace-one adjacency, Wang et al. (2019) bound and
    Mironov's conversion: the paper's analysis. ``rdp_poisson``: the same (q, σ, count) under
    Poisson sampling with add/remove adjacency (Opacus's RDP accountant). That assumption does
    not describe GS-WGAN, where removing a record changes its shard's discriminator, so both
    mixtures of a neighbouring pair carry the record. It is shown only for comparison.
    """
    run = event(noise_multiplier=noise_multiplier, num_discriminators=num_discriminators, batch_size=batch_size,
                iterations=iterations)
    as_poisson = dataclasses.replace(run, sampling="poisson", adjacency="add/remove")
    return {"wbk": privacy.epsilon(run, delta=delta, accountant="rdp"),
            "rdp_poisson": privacy.epsilon(as_poisson, delta=delta, accountant="rdp")}


def calibrate_noise_multiplier(*, target_epsilon: float, num_discriminators: int, batch_size: int,
                               iterations: int, delta: float) -> float:
    """Smallest σ (to 0.1%) whose ``wbk`` ε of :func:`epsilon` is at most ``target_epsilon``: the
    book's one calibrator (:func:`dpnb.privacy.calibrate_noise_multiplier`) on :func:`event`."""
    run = event(noise_multiplier=None, num_discriminators=num_discriminators, batch_size=batch_size,
                iterations=iterations)
    return privacy.calibrate_noise_multiplier(run, target_epsilon=target_epsilon, delta=delta, accountant="rdp")


@dataclass(frozen=True)
class GSWGANConfig:
    """GS-WGAN hyper-parameters (paper defaults in comments)."""

    num_discriminators: int = 100  # K (paper: 1000)
    pretrain_steps: int = 50  # warm-start WGAN-GP steps per discriminator (paper: 2000)
    iterations: int = 1000  # generator steps (paper: 20,000)
    critic_iters: int = 2  # discriminator steps per iteration (paper: 5)
    batch_size: int = 32  # generated samples per generator step, and real batch of a critic step (paper: 32)
    dp: bool = True
    noise_multiplier: float | None = None  # paper: 1.07
    target_epsilon: float | None = None
    max_grad_norm: float = 1.0  # C (paper: 1)
    delta: float = 1e-5
    gp_weight: float = 10.0
    lr: float = 1e-4  # Adam(0.5, 0.9) for every network (paper: 1e-4)
    pretrain_lr: float | None = None  # the warm start's learning rate; None: lr (the paper's 2000 steps use 1e-4)
    z_dim: int = 32
    width: int = 32
    ema_decay: float = 0.99  # paper: 0.999 over 20,000 iterations
    num_classes: int = 10  # public metadata of the dataset (dpnb.data.NUM_CLASSES), never read off the labels
    latent_dim: int | None = None  # None: 28x28 images; d: codes of a public autoencoder (dpnb.latent), MLP nets
    seed: int = 0
    log_every: int = 50
    device: str = "auto"  # auto (CUDA when present), cpu or cuda

    def validated(self, dataset_size: int) -> "GSWGANConfig":
        K = check_int("num_discriminators", self.num_discriminators, low=2, high=dataset_size // 2)
        check_int("num_classes", self.num_classes, low=2)
        if self.latent_dim is not None:
            check_int("latent_dim", self.latent_dim, low=1)
        check_int("pretrain_steps", self.pretrain_steps, low=0)
        check_int("iterations", self.iterations, low=1)
        check_int("critic_iters", self.critic_iters, low=1)
        check_int("batch_size", self.batch_size, low=1, high=dataset_size // K)
        check_number("max_grad_norm", self.max_grad_norm, low=0, low_open=True)
        check_number("delta", self.delta, low=0, high=1, low_open=True, high_open=True)
        check_number("gp_weight", self.gp_weight, low=0)
        check_number("lr", self.lr, low=0, low_open=True)
        if self.pretrain_lr is not None:
            check_number("pretrain_lr", self.pretrain_lr, low=0, low_open=True)
        check_number("ema_decay", self.ema_decay, low=0, high=1, high_open=True)
        check_int("log_every", self.log_every, low=1)
        select_device(self.device)
        check_budget(dp=self.dp, noise_multiplier=self.noise_multiplier, target_epsilon=self.target_epsilon)
        return self


@dataclass
class GSWGANResult:
    generator: nn.Module  # EMA of the generator: the released model
    config: GSWGANConfig
    history: pd.DataFrame
    noise_multiplier: float | None
    epsilon: dict[str, float] = field(default_factory=dict)
    pretrain_seconds: float = 0.0
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        c = self.config
        return dict(dp=c.dp, num_discriminators=c.num_discriminators, iterations=c.iterations,
                    batch_size=c.batch_size, noise_multiplier=self.noise_multiplier,
                    sample_rate=1 / c.num_discriminators, compositions=c.batch_size * c.iterations,
                    delta=c.delta if c.dp else None, epsilon_wbk=self.epsilon.get("wbk"),
                    epsilon_rdp_poisson=self.epsilon.get("rdp_poisson"),
                    pretrain_seconds=self.pretrain_seconds, seconds=self.seconds)


def _critic_step(D: nn.Module, G: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                 *, config: GSWGANConfig, generator: torch.Generator) -> float:
    """One non-private WGAN-GP step of a discriminator on a real batch of its own shard."""
    from torch.func import vmap

    with torch.no_grad():
        fake = G(torch.randn(len(y), config.z_dim, generator=generator).to(y.device), y)
    t = torch.rand(len(y), *([1] * (x.dim() - 1)), generator=generator).to(y.device)
    params = dict(D.named_parameters())
    losses = vmap(lambda *a: pair_loss(D, params, *a, loss="wgan-gp", gp_weight=config.gp_weight))(x, y, fake, t)
    opt.zero_grad(set_to_none=True)
    losses.mean().backward()
    opt.step()
    return float(losses.detach().mean())


def _adam(params: Any, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.9))


def _batch(shard: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    return shard[torch.randint(0, len(shard), (n,), generator=generator).to(shard.device)]


def pretrain_discriminators(data: TensorDataset, config: GSWGANConfig, *, progress: bool = True
                            ) -> tuple[list[nn.Module], list[torch.Tensor]]:
    """Warm start: K discriminators, each trained (no DP) on its own disjoint shard against its own
    throwaway generator, ``pretrain_steps`` WGAN-GP critic steps with a generator step every ``critic_iters``.

    Returns the discriminators and the shards (index tensors). A record touches one discriminator only.
    """
    from dpnb.progress import progress as progress_bar

    x_all, y_all = data.tensors
    N = len(y_all)
    K = config.num_discriminators
    device = select_device(config.device)
    x_all, y_all = x_all.to(device), y_all.to(device)
    g = torch.Generator().manual_seed(config.seed)
    perm = torch.randperm(N, generator=g).to(device)
    shards = list(perm[: (N // K) * K].view(K, -1))
    num_classes = config.num_classes
    discriminators = []
    for k in progress_bar(range(K), desc="warm start", enable=progress, mininterval=5):
        torch.manual_seed(config.seed * 100_003 + k)
        D = make_discriminator(num_classes=num_classes, width=config.width, latent_dim=config.latent_dim).to(device)
        G = make_generator(z_dim=config.z_dim, num_classes=num_classes, width=config.width,
                           latent_dim=config.latent_dim).to(device)
        lr = config.lr if config.pretrain_lr is None else config.pretrain_lr
        opt_d, opt_g = _adam(D.parameters(), lr), _adam(G.parameters(), lr)
        for step in range(1, config.pretrain_steps + 1):
            idx = _batch(shards[k], config.batch_size, g)
            _critic_step(D, G, opt_d, x_all[idx], y_all[idx], config=config, generator=g)
            if step % config.critic_iters == 0:
                y = torch.randint(0, num_classes, (config.batch_size,), generator=g).to(device)
                opt_g.zero_grad(set_to_none=True)
                (-D(G(torch.randn(len(y), config.z_dim, generator=g).to(device), y), y).mean()).backward()
                opt_g.step()
        discriminators.append(D)
    return discriminators, shards


def train_gswgan(data: TensorDataset, config: GSWGANConfig, *, progress: bool = True,
                 warm_start: tuple[list[nn.Module], list[torch.Tensor]] | None = None) -> GSWGANResult:
    """Train a GS-WGAN generator on ``data`` (images in [0, 1], integer labels); see the module docstring.

    ``warm_start``: the output of :func:`pretrain_discriminators` (computed here when None). It is
    modified in place (the discriminators keep training).
    """
    from dpnb.progress import progress as progress_bar
    x_all, y_all = data.tensors
    config = config.validated(len(y_all))
    device = select_device(config.device)
    x_all, y_all = x_all.to(device), y_all.to(device)
    t0 = time.perf_counter()
    discriminators, shards = warm_start if warm_start is not None else pretrain_discriminators(
        data, config, progress=progress)
    pretrain_seconds = time.perf_counter() - t0
    K = len(discriminators)
    if K != config.num_discriminators:
        raise ParameterError(f"warm_start has {K} discriminators, config.num_discriminators is "
                             f"{config.num_discriminators}")
    sigma = 0.0
    if config.dp:
        sigma = float(config.noise_multiplier) if config.noise_multiplier is not None else calibrate_noise_multiplier(
            target_epsilon=float(config.target_epsilon), num_discriminators=K,  # type: ignore[arg-type]
            batch_size=config.batch_size, iterations=config.iterations, delta=config.delta)
    torch.manual_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed + 1)
    num_classes = config.num_classes
    G = make_generator(z_dim=config.z_dim, num_classes=num_classes, width=config.width,
                       latent_dim=config.latent_dim).to(device)
    ema = EMA(G, decay=config.ema_decay)
    opt_g = _adam(G.parameters(), config.lr)
    opt_d = [_adam(D.parameters(), config.lr) for D in discriminators]
    for D in discriminators:
        D.requires_grad_(False)
    rows: list[dict[str, Any]] = []
    d_losses: list[float] = []
    grad_norms: list[torch.Tensor] = []  # each sample's gradient into the sanitiser, before clipping
    t1 = time.perf_counter()
    for it in progress_bar(range(1, config.iterations + 1), desc="GS-WGAN", enable=progress, mininterval=5):
        k = int(torch.randint(0, K, (1,), generator=g))  # 1. one discriminator trains on its shard
        D = discriminators[k].requires_grad_(True)
        for _ in range(config.critic_iters):
            idx = _batch(shards[k], config.batch_size, g)
            d_losses.append(_critic_step(D, G, opt_d[k], x_all[idx], y_all[idx], config=config, generator=g))
        D.requires_grad_(False)
        # 2. the generator: each sample is scored by its own random discriminator, through the sanitiser
        y = torch.randint(0, num_classes, (config.batch_size,), generator=g).to(device)
        fake = G(torch.randn(config.batch_size, config.z_dim, generator=g).to(device), y)
        if config.dp:
            fake = sanitize(fake, max_grad_norm=config.max_grad_norm, noise_multiplier=sigma, generator=g)
        fake.register_hook(lambda grad, out=grad_norms: out.append(grad.detach().flatten(1).norm(dim=1)))  # pre-clip
        ks = torch.randint(0, K, (config.batch_size,), generator=g).to(device)
        scores = torch.empty(config.batch_size, device=device)
        for kk in ks.unique().tolist():
            m = ks == kk
            scores = scores.index_put((m.nonzero().squeeze(1),), discriminators[kk](fake[m], y[m]))
        opt_g.zero_grad(set_to_none=True)
        (-scores.sum()).backward()  # a sum: each sample's gradient is its own (see sanitize)
        for p in G.parameters():
            if p.grad is not None:
                p.grad /= config.batch_size
        opt_g.step()
        ema.update(G)
        if it % config.log_every == 0 or it == config.iterations:
            norms = torch.cat(grad_norms)
            rows.append(dict(iteration=it, d_loss=sum(d_losses) / len(d_losses),
                             g_score=float(scores.detach().mean()), grad_norm_median=float(norms.median()),
                             clipped_fraction=float((norms > config.max_grad_norm).float().mean()),
                             seconds=time.perf_counter() - t1))
            d_losses, grad_norms = [], []
    eps = epsilon(noise_multiplier=sigma, num_discriminators=K, batch_size=config.batch_size,
                  iterations=config.iterations, delta=config.delta) if config.dp else {}
    return GSWGANResult(generator=ema.average.cpu(), config=config, history=pd.DataFrame(rows).assign(dp=config.dp),
                        noise_multiplier=sigma if config.dp else None, epsilon=eps,
                        pretrain_seconds=pretrain_seconds, seconds=time.perf_counter() - t0)


def input_gradient_norms(discriminators: list[nn.Module], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(K, n)``: the norm of ``dD_k(x_i, y_i) / dx_i`` for each discriminator k and image i.

    This is the size of the signal the sanitiser receives, to set beside its clip bound C. A
    WGAN-GP critic is pushed towards norm 1 on and between the data (Gulrajani et al. 2017,
    Sec. 4), so GS-WGAN's C = 1 clips little once its critics have trained.
    """
    rows = []
    for D in discriminators:
        xi = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(D(xi, y).sum(), xi)  # no BatchNorm: row i is sample i's own gradient
        rows.append(g.flatten(1).norm(dim=1))
    return torch.stack(rows)


def warm_start_gradient_norms(data: TensorDataset, config: GSWGANConfig, *, learning_rates: list[float],
                              x: torch.Tensor, y: torch.Tensor, discriminators: int = 8) -> pd.DataFrame:
    """Median :func:`input_gradient_norms` on ``(x, y)`` of a few warm-started discriminators, per warm-start rate.

    The first ``discriminators * (N // K)`` records of ``data`` are split into shards of the size the full
    warm start uses, and each rate in ``learning_rates`` warms them up with ``config``'s other settings.
    One row per rate, with the clip bound C to compare against.
    """
    K = check_int("discriminators", discriminators, low=1, high=config.num_discriminators)
    shard = len(data.tensors[1]) // config.num_discriminators
    subset = TensorDataset(*(t[: K * shard] for t in data.tensors))
    rows = []
    for lr in learning_rates:
        cfg = GSWGANConfig(**(vars(config) | dict(num_discriminators=K, pretrain_lr=lr)))
        norms = input_gradient_norms(pretrain_discriminators(subset, cfg, progress=False)[0], x, y)
        rows.append(dict(pretrain_lr=lr, pretrain_steps=config.pretrain_steps, discriminators=K,
                         median_gradient_norm=float(norms.median()), clip_bound=config.max_grad_norm))
    return pd.DataFrame(rows)


def batch_mechanism_epsilon(*, noise_multiplier: float, num_discriminators: int, batch_size: int,
                            iterations: int, delta: float) -> float:
    """ε (WBK bound) when all B samples of a step share one discriminator (the paper's code).

    The B sanitised gradients then form one Gaussian mechanism with L2 sensitivity ``2C sqrt(B)``
    against noise ``2C sigma`` per coordinate, i.e. noise multiplier ``sigma / sqrt(B)``,
    subsampled at 1/K once per iteration.
    """
    run = event(noise_multiplier=noise_multiplier / math.sqrt(batch_size), num_discriminators=num_discriminators,
                batch_size=1, iterations=iterations)
    return privacy.epsilon(run, delta=delta, accountant="rdp")


def accounting_row(*, setting: str, num_discriminators: int, noise_multiplier: float, batch_size: int,
                   iterations: int, delta: float) -> dict[str, Any]:
    """ε of one (K, σ, B, T) setting under the three analyses the chapter compares.

    ``epsilon_wbk_replace_one``: the paper's analysis (:func:`epsilon`, WBK 2019 Thm 9);
    ``epsilon_poisson_add_remove``: the same compositions as if Poisson-sampled with add/remove
    adjacency (Mironov et al. 2019), which is not GS-WGAN's mechanism;
    ``epsilon_one_discriminator_per_batch``: :func:`batch_mechanism_epsilon`.
    """
    kw = dict(noise_multiplier=noise_multiplier, num_discriminators=num_discriminators, batch_size=batch_size,
              iterations=iterations, delta=delta)
    e = epsilon(**kw)  # type: ignore[arg-type]
    return dict(setting=setting, K=num_discriminators, sample_rate=1 / num_discriminators,
                noise_multiplier=noise_multiplier, batch_size=batch_size, iterations=iterations,
                compositions=batch_size * iterations, delta=delta, epsilon_wbk_replace_one=e["wbk"],
                epsilon_poisson_add_remove=e["rdp_poisson"],
                epsilon_one_discriminator_per_batch=batch_mechanism_epsilon(**kw))  # type: ignore[arg-type]


def conversions(*, noise_multiplier: float, num_discriminators: int, batch_size: int, iterations: int,
                delta: float) -> pd.DataFrame:
    """ε of GS-WGAN's ``batch_size * iterations`` compositions under two analyses and two conversions.

    The paper's ε ≈ 10 and the Poisson figure differ in two things at once: the analysis (shards
    without replacement under replace-one, Wang et al. 2019, Thm. 9; or Poisson sampling under
    add/remove, Mironov et al. 2019) and the RDP-to-(ε, δ) conversion (Mironov 2017, Prop. 3, which
    the paper's autodp uses; or Balle et al. 2020, Thm. 21, which Opacus uses). Both curves here are
    evaluated on the same integer orders 2..256, so each column changes one thing only.

        >>> t = conversions(noise_multiplier=1.07, num_discriminators=1000, batch_size=32, iterations=20_000,
        ...                 delta=1e-5)
        >>> round(float(t.loc[("shards without replacement, replace-one", "mironov"), "epsilon"]), 2)
        9.99
    """
    q = 1 / check_int("num_discriminators", num_discriminators, low=2)
    steps = check_int("batch_size", batch_size, low=1) * check_int("iterations", iterations, low=1)
    orders = privacy.WBK_ORDERS
    curves = {
        "shards without replacement, replace-one": steps * privacy.wbk_subsampled_gaussian_rdp(
            noise_multiplier=noise_multiplier, sample_rate=q, orders=orders),
        "Poisson sampling, add/remove": steps * privacy.sgm_rdp(noise_multiplier=noise_multiplier, sample_rate=q,
                                                                orders=[float(a) for a in orders]),
    }
    rows = [dict(analysis=name, conversion=conv,
                 epsilon=privacy.rdp_to_epsilon(rdp=curve, orders=[float(a) for a in orders], delta=delta,
                                                conversion=conv)[0])
            for name, curve in curves.items() for conv in ("mironov", "balle")]
    return pd.DataFrame(rows).set_index(["analysis", "conversion"])
