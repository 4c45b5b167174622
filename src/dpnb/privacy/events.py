"""A record of what ran: the sampled Gaussian mechanism of a DP training run.

Every private loop in ``dpnb`` (Opacus's DP-SGD, the linear heads, augmentation multiplicity,
the DP-GAN discriminator, GS-WGAN's sanitiser) is, for accounting, ``steps`` repetitions of one
Gaussian mechanism with noise multiplier σ on a sampled subset of the data. The record says
*how* the subset was drawn and *which* neighbouring datasets the guarantee is about, because
the ε of the same (σ, q, T) depends on both (in the spirit of Google dp-accounting's
``DpEvent``: the record is handed to an accountant, which refuses what it cannot bound).

Sampling schemes (``sampling``):

* ``"poisson"``: each example joins each batch independently with probability ``sample_rate``
  (Opacus's ``DPDataLoader``; what DP-SGD's analyses assume);
* ``"shards"``: the data are split once into fixed shards and each step uses one shard chosen
  uniformly, i.e. a subsample drawn without replacement at rate ``1/K`` (GS-WGAN);
* ``"shuffled"``: a fixed-size batch from a shuffled pass (an ordinary ``DataLoader``). No
  accountant here bounds it; see :func:`dpnb.privacy.epsilon`.

Composition (``composed_with``): other Gaussian releases of the same private data that the
guarantee must cover as well, e.g. the noisy feature statistics a model is normalised with
before it is trained (Tramèr & Boneh 2021, Sec. 3.1). Their privacy losses add up with the
run's (RDP: the curves add, Mironov 2017, Prop. 1; PRV: the loss distributions convolve, Gopi et
al. 2021); :meth:`SampledGaussianEvent.gaussian` is such a release on the whole dataset.

Adjacency (``adjacency``): ``"add/remove"`` (one example added or removed, Opacus's and TF
Privacy's) or ``"replace-one"`` (one example replaced; GS-WGAN's). ε under the two are different
quantities and never share a column.

Example::

    >>> e = SampledGaussianEvent.from_batches(noise_multiplier=1.1, dataset_size=60_000,
    ...                                       batch_size=256, epochs=60)
    >>> round(e.sample_rate, 6), e.steps, e.label("rdp")
    (0.004267, 14063, 'rdp (Poisson sampling, add/remove)')
    >>> stats = SampledGaussianEvent.gaussian(noise_multiplier=20.0, releases=2)  # two noisy sums of all data
    >>> e.composed(stats).composed_with[0].sample_rate, e.composed(stats).label("rdp")
    (1.0, 'rdp (Poisson sampling, add/remove; with 2 Gaussian releases)')
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from dpnb.params import ParameterError, check_choice, check_int, check_number

__all__ = ["SAMPLINGS", "ADJACENCIES", "Sampling", "Adjacency", "SampledGaussianEvent",
           "sample_rate_and_steps"]

Sampling = Literal["poisson", "shards", "shuffled"]
Adjacency = Literal["add/remove", "replace-one"]
SAMPLINGS: tuple[str, ...] = ("poisson", "shards", "shuffled")
ADJACENCIES: tuple[str, ...] = ("add/remove", "replace-one")

_SAMPLING_TEXT = {"poisson": "Poisson sampling", "shards": "shards without replacement",
                  "shuffled": "shuffled batches"}


def sample_rate_and_steps(*, dataset_size: int, batch_size: int, epochs: float) -> tuple[float, int]:
    """The book's one sampling-rate convention: ``q = batch_size / dataset_size``, ``T = ceil(epochs / q)``.

    ``batch_size`` is the *expected* batch size under Poisson sampling, so the expected batch is
    exactly ``batch_size`` and the noisy sum is divided by it. The rounding of the step count
    follows TF Privacy's ``compute_dp_sgd_privacy``. (Opacus's ``DPDataLoader`` instead samples at
    ``1/ceil(N/B)`` and runs ``int(1/q)`` steps per epoch; :mod:`dpnb.train` records what it ran.)

        >>> sample_rate_and_steps(dataset_size=1000, batch_size=100, epochs=2.5)
        (0.1, 25)
    """
    dataset_size = check_int("dataset_size", dataset_size, low=1)
    batch_size = check_int("batch_size", batch_size, low=1)
    epochs = check_number("epochs", epochs, low=0, low_open=True)
    if batch_size > dataset_size:
        raise ParameterError(f"batch_size must be at most dataset_size ({dataset_size}), got {batch_size}")
    return batch_size / dataset_size, int(math.ceil(epochs * dataset_size / batch_size))


@dataclass(frozen=True)
class SampledGaussianEvent:
    """``steps`` compositions of a Gaussian mechanism (noise multiplier σ) on a sampled subset.

    ``noise_multiplier`` is the noise std divided by the L2 sensitivity of one step's sum (the
    clipping norm C for DP-SGD; 2C per sample for GS-WGAN's sanitiser, whose σ is stated
    against that). ``noise_multiplier=None`` is a planned run whose σ is still to be calibrated
    (:func:`dpnb.privacy.calibrate_noise_multiplier`). ``composed_with`` holds other releases of
    the same data (each with its σ, under the same adjacency) that ε must cover too; σ, ``steps``
    and calibration always refer to the run itself.
    """

    noise_multiplier: float | None
    sample_rate: float
    steps: int
    sampling: Sampling = "poisson"
    adjacency: Adjacency = "add/remove"
    composed_with: tuple["SampledGaussianEvent", ...] = ()

    def __post_init__(self) -> None:
        if self.noise_multiplier is not None:
            check_number("noise_multiplier", self.noise_multiplier, low=0, low_open=True)
        check_number("sample_rate", self.sample_rate, low=0, high=1, low_open=True)
        check_int("steps", self.steps, low=1)
        check_choice("sampling", self.sampling, SAMPLINGS)
        check_choice("adjacency", self.adjacency, ADJACENCIES)
        if not isinstance(self.composed_with, tuple):
            raise ParameterError("composed_with must be a tuple of SampledGaussianEvents")
        for other in self.composed_with:
            if not isinstance(other, SampledGaussianEvent) or other.noise_multiplier is None or other.composed_with:
                raise ParameterError("composed_with must hold SampledGaussianEvents with a noise_multiplier "
                                     "(and nothing composed with them)")
            if other.adjacency != self.adjacency:
                raise ParameterError(f"composed_with must share the run's adjacency ({self.adjacency}), "
                                     f"got {other.adjacency}")

    @classmethod
    def gaussian(cls, *, noise_multiplier: float, releases: int = 1,
                 adjacency: Adjacency = "add/remove") -> "SampledGaussianEvent":
        """``releases`` Gaussian mechanisms on the whole dataset (rate 1), each with noise std
        ``noise_multiplier`` times its sum's L2 sensitivity, e.g. noisy statistics of the data."""
        return cls(noise_multiplier=noise_multiplier, sample_rate=1.0, steps=releases, adjacency=adjacency)

    def composed(self, *others: "SampledGaussianEvent") -> "SampledGaussianEvent":
        """This run, with ``others`` (releases of the same data) composed with it."""
        return replace(self, composed_with=self.composed_with + others)

    @classmethod
    def from_batches(cls, *, noise_multiplier: float | None, dataset_size: int, batch_size: int,
                     epochs: float) -> "SampledGaussianEvent":
        """Poisson sampling with expected batch ``batch_size`` for ``epochs`` passes (add/remove)."""
        q, steps = sample_rate_and_steps(dataset_size=dataset_size, batch_size=batch_size, epochs=epochs)
        return cls(noise_multiplier=noise_multiplier, sample_rate=q, steps=steps)

    def with_noise(self, noise_multiplier: float) -> "SampledGaussianEvent":
        """The same run with noise multiplier ``noise_multiplier``."""
        return replace(self, noise_multiplier=noise_multiplier)

    def with_steps(self, steps: int) -> "SampledGaussianEvent":
        """The same mechanism run for ``steps`` steps."""
        return replace(self, steps=steps)

    @property
    def sampling_text(self) -> str:
        return _SAMPLING_TEXT[self.sampling]

    def label(self, accountant: str) -> str:
        """How an ε of this run is labelled in tables and CSVs: accountant, sampling, adjacency (and
        the releases composed with it)."""
        extra = sum(e.steps for e in self.composed_with)
        also = f"; with {extra} Gaussian release{'s' if extra > 1 else ''}" if extra else ""
        return f"{accountant} ({self.sampling_text}, {self.adjacency}{also})"
