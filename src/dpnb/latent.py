r"""Private generators in the latent space of a public autoencoder.

A generator of 784 pixels trained with DP pays noise on every pixel's gradient. If a *public*
autoencoder already maps images to d ≪ 784 codes and back, the private part can be a model of
codes: a d-dimensional problem, and the decoder (public, free) turns codes into images. The
protocol of the CSC2412 project "Exploring pretrained feature extractors for DP generative
modelling" (J. Tang et al., 2023), and the pieces of this module:

* **data** (:func:`csc2412_split`): of MNIST's 60,000 training images, 20,000 random ones form a
  labelling set (the judge trains on it); of the other 40,000, the odd digits are *public* and
  the even digits *private*. In the ten-class setting every MNIST image is private and the public
  data are Fashion-MNIST (a different domain).
* **the public autoencoder** (:func:`mlp_autoencoder`, the project's 784→128→100 MLP;
  :func:`conv_autoencoder`, a small convolutional one), trained on public data only
  (:func:`train_autoencoder`).
* **private codes**: the public encoder (:func:`encode`) or **model inversion** (:func:`invert`):
  gradient descent on each code to minimise ‖Dec(z) − x‖² through the frozen public decoder. Both
  are per-example maps: example i's code depends on x_i and on public weights only, so a DP
  mechanism applied to the codes is DP for the images (changing one image changes one code).
* **code scaling** (:class:`CodeScale`): codes are centred and scaled by *public* statistics and
  clipped to norm 1, the bound the mechanisms' sensitivities assume.
* **DP generators of codes**: a class-conditional VAE trained with the book's DP-SGD stages
  (:func:`train_dp_vae`); GS-WGAN with MLP networks (:class:`dpnb.gswgan.GSWGANConfig` with
  ``latent_dim``); the one-shot releases of :mod:`dpnb.oneshot`.

Example::

    >>> import torch
    >>> enc, dec = mlp_autoencoder(latent_dim=8, hidden=16)
    >>> x = torch.rand(5, 1, 28, 28)
    >>> z = invert(dec, x, steps=3, lr=0.1)
    >>> z.shape, dec(z).shape
    (torch.Size([5, 8]), torch.Size([5, 1, 28, 28]))
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from dpnb import dpsgd
from dpnb.oneshot import ClassGaussians, clip_rows, release_class_gaussians
from dpnb.params import ParameterError, check_int, check_number

__all__ = ["csc2412_split", "mlp_autoencoder", "conv_autoencoder", "AUTOENCODERS", "train_autoencoder", "encode",
           "decode", "invert", "CodeScale", "PublicDecoder", "one_shot_samples",
           "ConditionalVAE", "DPVAEResult", "train_dp_vae", "nearest_distances",
           "score"]

AUTOENCODERS = ("mlp", "conv")


def csc2412_split(labels: torch.Tensor, *, labelling: int = 20_000, seed: int = 42) -> dict[str, torch.Tensor]:
    """Indices of the CSC2412 split of a training set: ``labelling`` random images; of the rest, odd
    digits public and even digits private. The seed and sizes are public choices, not data."""
    n = len(labels)
    labelling = check_int("labelling", labelling, low=0, high=n - 2)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    rest = perm[labelling:]
    odd = labels[rest] % 2 == 1
    return {"labelling": perm[:labelling].sort().values, "public": rest[odd].sort().values,
            "private": rest[~odd].sort().values}


def mlp_autoencoder(*, latent_dim: int = 100, hidden: int = 128) -> tuple[nn.Module, nn.Module]:
    """The CSC2412 project's autoencoder: 784 → hidden (LeakyReLU 0.2) → d, and d → hidden (ReLU) → 784, sigmoid."""
    d, h = check_int("latent_dim", latent_dim, low=1), check_int("hidden", hidden, low=1)
    enc = nn.Sequential(nn.Flatten(), nn.Linear(784, h), nn.LeakyReLU(0.2), nn.Linear(h, d))
    dec = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, 784), nn.Sigmoid(), nn.Unflatten(1, (1, 28, 28)))
    return enc, dec


def conv_autoencoder(*, latent_dim: int = 64, width: int = 32) -> tuple[nn.Module, nn.Module]:
    """Two stride-2 convolutions (28 → 14 → 7), a linear map to d; the decoder mirrors it (transposed convolutions)."""
    d, w = check_int("latent_dim", latent_dim, low=1), check_int("width", width, low=1)
    enc = nn.Sequential(nn.Conv2d(1, w, 4, 2, 1), nn.ReLU(), nn.Conv2d(w, 2 * w, 4, 2, 1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(2 * w * 49, d))
    dec = nn.Sequential(nn.Linear(d, 2 * w * 49), nn.ReLU(), nn.Unflatten(1, (2 * w, 7, 7)),
                        nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(w, 1, 4, 2, 1),
                        nn.Sigmoid())
    return enc, dec


def train_autoencoder(enc: nn.Module, dec: nn.Module, x: torch.Tensor, *, epochs: int, lr: float = 1e-3,
                      batch_size: int = 128, weight_decay: float = 0.0, seed: int = 0,
                      progress: bool = True) -> pd.DataFrame:
    """Non-private Adam on the mean squared reconstruction error of **public** images ``x`` in [0, 1].

    Returns one row per epoch (``epoch``, ``mse``, ``seconds``).
    """
    from dpnb.progress import progress as progress_bar

    epochs = check_int("epochs", epochs, low=1)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=check_number("lr", lr, low=0, low_open=True),
                           weight_decay=weight_decay)
    rows, t0 = [], time.perf_counter()
    enc.train()
    dec.train()
    for epoch in progress_bar(range(1, epochs + 1), desc="public autoencoder", enable=progress):
        total = 0.0
        for idx in torch.randperm(len(x), generator=g).split(check_int("batch_size", batch_size, low=1)):
            opt.zero_grad(set_to_none=True)
            loss = ((dec(enc(x[idx])) - x[idx]) ** 2).mean()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        rows.append(dict(epoch=epoch, mse=total / len(x), seconds=time.perf_counter() - t0))
    enc.eval()
    dec.eval()
    return pd.DataFrame(rows)


@torch.no_grad()
def encode(enc: nn.Module, x: torch.Tensor, *, batch_size: int = 2000) -> torch.Tensor:
    """Codes of images ``x`` by the public encoder, one row per image (a per-example map)."""
    enc.eval()
    return torch.cat([enc(b) for b in x.split(batch_size)]) if len(x) else torch.empty(0)


@torch.no_grad()
def decode(dec: nn.Module, z: torch.Tensor, *, batch_size: int = 2000) -> torch.Tensor:
    """Images of codes ``z`` by the public decoder."""
    dec.eval()
    return torch.cat([dec(b) for b in z.split(batch_size)])


def invert(dec: nn.Module, x: torch.Tensor, *, steps: int = 300, lr: float = 0.05, init: torch.Tensor | None = None,
           batch_size: int = 4000) -> torch.Tensor:
    r"""Model inversion: for every image, :math:`z^* = \arg\min_z \lVert \mathrm{Dec}(z) - x\rVert^2`, by Adam.

    The objective is a *sum* over images of per-image errors and Adam's update is coordinate-wise,
    so z_i's trajectory depends on x_i and the public decoder only (tested); batching is for speed.
    ``init`` (e.g. the encoder's codes) starts the descent; zeros otherwise. The CSC2412 project
    descended with plain SGD at lr 200 for up to 200,000 iterations; Adam reaches a lower error in
    a few hundred steps here (the chapter measures it).
    """
    steps = check_int("steps", steps, low=1)
    lr = check_number("lr", lr, low=0, low_open=True)
    dec.eval()
    for p in dec.parameters():
        p.requires_grad_(False)
    d = dec[0].in_features if isinstance(dec, nn.Sequential) and isinstance(dec[0], nn.Linear) else None
    if init is None and d is None:
        raise ParameterError("invert needs init for a decoder whose input size it cannot read")
    out = []
    try:
        for i, xb in enumerate(x.split(check_int("batch_size", batch_size, low=1))):
            start = init[i * batch_size:i * batch_size + len(xb)] if init is not None else torch.zeros(len(xb), d)
            z = start.detach().clone().requires_grad_(True)
            opt = torch.optim.Adam([z], lr=lr)
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                ((dec(z) - xb) ** 2).flatten(1).sum(1).sum().backward()
                opt.step()
            out.append(z.detach())
    finally:
        for p in dec.parameters():
            p.requires_grad_(True)
    return torch.cat(out)


@dataclass(frozen=True)
class CodeScale:
    """Public centring and scaling of codes: ``(z - center) / radius``, then clipped to norm 1.

    Fitted on **public** codes (:meth:`fit`): ``radius`` is the ``quantile`` of their centred norms,
    so private codes are clipped at a public bound; :meth:`invert` undoes the scaling.
    """

    center: torch.Tensor
    radius: float

    @classmethod
    def fit(cls, public_codes: torch.Tensor, *, quantile: float = 0.95) -> "CodeScale":
        q = check_number("quantile", quantile, low=0, high=1, low_open=True)
        center = public_codes.mean(0)
        return cls(center=center, radius=float((public_codes - center).norm(dim=1).quantile(q)))

    def apply(self, z: torch.Tensor) -> torch.Tensor:
        return clip_rows((z - self.center) / self.radius, bound=1.0)

    def invert(self, u: torch.Tensor) -> torch.Tensor:
        return u * self.radius + self.center


@dataclass(frozen=True)
class PublicDecoder:
    """Generated (scaled) codes to images: :meth:`CodeScale.invert`, then the public decoder.

    Everything a private generator of codes releases passes through this map; it reads public
    weights and statistics only, so it is post-processing and costs no privacy.
    """

    decoder: nn.Module
    scale: CodeScale

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        return decode(self.decoder, self.scale.invert(u))


def one_shot_samples(u: torch.Tensor, y: torch.Tensor, *, classes: list[int], epsilon: float | None, delta: float,
                     per_class: int, components: int = 1, iterations: int = 3,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, ClassGaussians]:
    """Release class Gaussians of scaled codes ``u`` once (:func:`dpnb.oneshot.release_class_gaussians`) and
    draw ``per_class`` codes of each class from the release; the noise and the samples have their own seeds
    (``1000 + seed`` and ``2000 + seed``), so one seed fixes a run. Returns (codes, labels, release)."""
    rel = release_class_gaussians(u, y, classes=classes, epsilon=epsilon, delta=delta, components=components,
                                  iterations=iterations, generator=torch.Generator().manual_seed(1000 + seed))
    codes, labels = rel.sample(per_class, generator=torch.Generator().manual_seed(2000 + seed))
    return codes, labels, rel


class ConditionalVAE(nn.Module):
    """A small class-conditional VAE of codes: (u, y) → (μ, log σ²) of k latent units → (v, y) → û.

    Tanh activations and no normalisation layer (per-example gradients by ``torch.func``).
    """

    def __init__(self, *, dim: int, num_classes: int, hidden: int = 128, latent: int = 16) -> None:
        super().__init__()
        self.dim, self.num_classes, self.latent = dim, num_classes, latent
        self.enc = nn.Sequential(nn.Linear(dim + num_classes, hidden), nn.Tanh(), nn.Linear(hidden, 2 * latent))
        self.dec = nn.Sequential(nn.Linear(latent + num_classes, hidden), nn.Tanh(), nn.Linear(hidden, dim))

    def loss(self, u: torch.Tensor, y: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """ELBO loss of a batch (its per-row terms summed over coordinates), reparameterised with ``noise``."""
        onehot = nn.functional.embedding(y, torch.eye(self.num_classes))  # one-hot, vmap-safe
        mu, logvar = self.enc(torch.cat([u, onehot], 1)).chunk(2, 1)
        v = mu + noise * (0.5 * logvar).exp()
        rec = self.dec(torch.cat([v, onehot], 1))
        return ((rec - u) ** 2).sum(1) + 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(1)

    def forward(self, u: torch.Tensor, y: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.loss(u, y, noise)

    @torch.no_grad()
    def sample(self, y: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        onehot = nn.functional.embedding(y, torch.eye(self.num_classes))  # one-hot, vmap-safe
        return self.dec(torch.cat([torch.randn(len(y), self.latent, generator=generator), onehot], 1))


@dataclass
class DPVAEResult:
    model: ConditionalVAE
    noise_multiplier: float | None
    epsilon: float | None
    delta: float | None
    steps: int
    history: pd.DataFrame
    seconds: float
    meta: dict[str, Any] = field(default_factory=dict)


def train_dp_vae(u: torch.Tensor, y: torch.Tensor, *, num_classes: int, epochs: int, batch_size: int,
                 lr: float = 1e-3, max_grad_norm: float = 1.0, target_epsilon: float | None = None,
                 noise_multiplier: float | None = None, delta: float = 1e-5, dp: bool = True,
                 hidden: int = 128, latent: int = 16, accountant: str = "prv", seed: int = 0,
                 progress: bool = True) -> DPVAEResult:
    """Train :class:`ConditionalVAE` on scaled codes ``u`` with the book's DP-SGD stages (:mod:`dpnb.dpsgd`).

    Poisson batches at q = 1/⌈N/B⌉, per-example gradients by ``torch.func`` (one reparameterisation
    draw per example), each clipped to C, noise σC on the sum, division by qN, then Adam (post-processing
    of the noisy gradient). The labels ``y`` are private too: they enter only through the clipped gradients.
    ``dp=False`` trains the same model on shuffled batches without clipping or noise.
    """
    from dpnb.progress import progress as progress_bar

    n, dim = u.shape
    epochs = check_int("epochs", epochs, low=1)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = ConditionalVAE(dim=dim, num_classes=check_int("num_classes", num_classes, low=2), hidden=hidden,
                           latent=latent)
    opt = torch.optim.Adam(model.parameters(), lr=check_number("lr", lr, low=0, low_open=True))
    rows, t0 = [], time.perf_counter()
    if not dp:
        steps = 0
        for epoch in progress_bar(range(1, epochs + 1), desc="VAE", enable=progress):
            for idx in torch.randperm(n, generator=g).split(check_int("batch_size", batch_size, low=1, high=n)):
                loss = model.loss(u[idx], y[idx], torch.randn(len(idx), latent, generator=g)).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
            rows.append(dict(epoch=epoch, loss=float(loss.detach()), seconds=time.perf_counter() - t0))
        return DPVAEResult(model.eval(), None, None, None, steps, pd.DataFrame(rows), time.perf_counter() - t0)
    core = dpsgd.DPSGD(dataset_size=n, batch_size=batch_size, epochs=epochs, max_grad_norm=max_grad_norm,
                       noise_multiplier=noise_multiplier, target_epsilon=target_epsilon, delta=delta,
                       accountant=accountant, generator=g)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def one(p: dict[str, torch.Tensor], ui: torch.Tensor, yi: torch.Tensor, ei: torch.Tensor) -> torch.Tensor:
        return functional_call(model, p, (ui[None], yi[None], ei[None]))[0]

    per_example = vmap(grad(one), in_dims=(None, 0, 0, 0))
    for epoch in progress_bar(range(1, epochs + 1), desc="DP-VAE", enable=progress):
        losses = []
        for _ in range(core.steps_per_epoch):
            idx = core.sample()
            if len(idx):
                params = {k: v.detach() for k, v in model.named_parameters()}
                grads = per_example(params, u[idx], y[idx], torch.randn(len(idx), latent, generator=g))
                sums, _ = dpsgd.clip_and_sum(grads, max_grad_norm=core.max_grad_norm)
                with torch.no_grad():
                    losses.append(float(model.loss(u[idx], y[idx], torch.randn(len(idx), latent, generator=g)).mean()))
            else:  # an empty Poisson batch: the noise alone
                sums = {k: torch.zeros_like(v) for k, v in model.named_parameters()}
            noisy = core.privatize(sums)
            for k, p in model.named_parameters():
                p.grad = noisy[k]
            opt.step()
        rows.append(dict(epoch=epoch, loss=sum(losses) / max(len(losses), 1), seconds=time.perf_counter() - t0))
    eps = core.epsilons()[f"epsilon_{accountant}"] if accountant in ("prv", "rdp") else math.nan
    return DPVAEResult(model.eval(), core.noise_multiplier, eps, delta, core.steps, pd.DataFrame(rows),
                       time.perf_counter() - t0)


@torch.no_grad()
def nearest_distances(samples: torch.Tensor, reference: torch.Tensor, *, batch_size: int = 1000) -> torch.Tensor:
    """For each sample, the L2 distance (in pixels) to its nearest image in ``reference``: the memorisation probe."""
    ref = reference.reshape(len(reference), -1).float()
    return torch.cat([torch.cdist(b.reshape(len(b), -1).float(), ref).min(1).values
                      for b in samples.split(batch_size)])


def score(images: torch.Tensor, labels: torch.Tensor, *, judge: Any, test: Any, validation: Any | None = None,
          private: torch.Tensor | None = None, models: tuple[str, ...] = ("logistic regression", "MLP", "CNN"),
          cnn_epochs: int = 3, probe: int = 500, seed: int = 0) -> dict[str, float]:
    """The scores of one generator's labelled samples, as the GAN chapters judge them, plus two:

    * ``fid`` and ``inception_score`` by ``judge`` (:class:`dpnb.metrics.Judge`), and downstream
      accuracy on the real ``test`` set of each of ``models`` (the CNN is trained once);
    * ``CNN (validation)``: the same CNN on ``validation`` (real images held out of training),
      which is what the chapter selects variants on;
    * ``memorisation``: the median distance from ``probe`` samples to their nearest image in
      ``private`` divided by the median distance to their nearest ``test`` image, with both
      reference sets of the same size. A ratio well below 1 means the samples sit closer to the
      training images than to unseen ones of the same distribution: memorisation.
    """
    from torch.utils.data import TensorDataset

    from dpnb import metrics

    out = metrics.evaluate_samples(TensorDataset(images, labels), judge, test, models=models, cnn_epochs=cnn_epochs,
                                   seed=seed, validation=validation)
    if private is not None:
        xt = test.tensors[0]
        m = min(len(private), len(xt))
        g = torch.Generator().manual_seed(seed)
        ref_p = private[torch.randperm(len(private), generator=g)[:m]]
        ref_t = xt[torch.randperm(len(xt), generator=g)[:m]]
        few = images[torch.randperm(len(images), generator=g)[:probe]]
        out["memorisation"] = float(nearest_distances(few, ref_p).median() / nearest_distances(few, ref_t).median())
    return out
