"""Published results the book compares against, with their accountant and setting.

Each row: ``dataset``, ``source`` (short, for legends), ``cite`` (key in ``book/references.bib``),
``model``, ``epsilon``, ``delta``, ``accountant``, ``test_accuracy``. The ε values are as
printed in the papers; their accountants differ, so compare with care (see the budget chapter).

Example::

    >>> from dpnb.published import published
    >>> float(published("mnist")["test_accuracy"].max())
    0.981
"""

from __future__ import annotations

import pandas as pd

_ROWS = [
    # Abadi et al. 2016, Section 5.2 / Fig. 4: PCA + 1000-unit MLP, moments accountant.
    ("mnist", "Abadi et al. 2016", "abadi2016deep", "PCA + MLP", 0.5, 1e-5, "moments accountant", 0.90),
    ("mnist", "Abadi et al. 2016", "abadi2016deep", "PCA + MLP", 2.0, 1e-5, "moments accountant", 0.95),
    ("mnist", "Abadi et al. 2016", "abadi2016deep", "PCA + MLP", 8.0, 1e-5, "moments accountant", 0.97),
    # TF Privacy MNIST tutorial: CNN, RDP with the old (Mironov 2017) conversion.
    ("mnist", "TF Privacy tutorial", "tfprivacy", "CNN", 1.19, 1e-5, "RDP, old conversion", 0.950),
    ("mnist", "TF Privacy tutorial", "tfprivacy", "CNN", 3.01, 1e-5, "RDP, old conversion", 0.966),
    ("mnist", "TF Privacy tutorial", "tfprivacy", "CNN", 7.10, 1e-5, "RDP, old conversion", 0.970),
    # Tramèr & Boneh 2021, Table 2: end-to-end tanh CNN, RDP.
    ("mnist", "Tramèr & Boneh 2021", "tramer2021differentially", "end-to-end CNN", 3.0, 1e-5, "RDP", 0.981),
    # Tramèr & Boneh 2021, Table 2: CIFAR-10 at eps = 3.
    ("cifar10", "Tramèr & Boneh 2021", "tramer2021differentially", "end-to-end CNN", 3.0, 1e-5, "RDP", 0.592),
    ("cifar10", "Tramèr & Boneh 2021", "tramer2021differentially", "ScatterNet + linear", 3.0, 1e-5, "RDP", 0.670),
    ("cifar10", "Tramèr & Boneh 2021", "tramer2021differentially", "ScatterNet + CNN", 3.0, 1e-5, "RDP", 0.693),
    # De et al. 2022, Table 2 / Fig. 1: WRN-16-4, batch 4096, augmult 16, EMA, from scratch.
    ("cifar10", "De et al. 2022", "de2022unlocking", "WRN-16-4", 1.0, 1e-5, "RDP", 0.568),
    ("cifar10", "De et al. 2022", "de2022unlocking", "WRN-16-4", 2.0, 1e-5, "RDP", 0.659),
    ("cifar10", "De et al. 2022", "de2022unlocking", "WRN-16-4", 4.0, 1e-5, "RDP", 0.735),
    ("cifar10", "De et al. 2022", "de2022unlocking", "WRN-16-4", 8.0, 1e-5, "RDP", 0.795),
    # Remerscheid et al. 2022 (SmoothNets), abstract: SmoothNet W80D50, Opacus make_private_with_epsilon, batch 256,
    # SGD momentum 0.9. The abstract gives epsilon = 7 only; the other epsilons are the Pareto front of the
    # authors' code (DPBenchmark experiments/pareto_front.py), not a table of the paper.
    ("cifar10", "Remerscheid et al. 2022", "remerscheid2022smoothnets", "SmoothNet W80D50", 7.0, 1e-5,
     "Opacus (make_private_with_epsilon)", 0.735),
    ("cifar10", "Remerscheid et al. 2022, code", "remerscheid2022smoothnets", "SmoothNet W80D50", 1.0, 1e-5,
     "Opacus (make_private_with_epsilon)", 0.626),
    ("cifar10", "Remerscheid et al. 2022, code", "remerscheid2022smoothnets", "SmoothNet W80D50", 3.0, 1e-5,
     "Opacus (make_private_with_epsilon)", 0.700),
    ("cifar10", "Remerscheid et al. 2022, code", "remerscheid2022smoothnets", "SmoothNet W80D50", 10.0, 1e-5,
     "Opacus (make_private_with_epsilon)", 0.738),
]
COLUMNS = ["dataset", "source", "cite", "model", "epsilon", "delta", "accountant", "test_accuracy"]


# One-run audits (Steinke et al. 2023's bound) as published, at delta = 1e-5.
# ML Privacy Meter, documentation/dpaudit.md: CIFAR-10 CNN, 1000 canaries, 200 epochs; the DP runs
# use Opacus with sigma = 0.5, C = 1.0; the accountant and sampling behind epsilon = 68.51 are not stated.
_AUDITS = [
    ("ML Privacy Meter", "privacymeter", "CIFAR-10 CNN", "mislabelled", False, None, 1e-5, "", 5.4814),
    ("ML Privacy Meter", "privacymeter", "CIFAR-10 CNN", "mislabelled", True, 68.51, 1e-5, "not stated (Opacus)",
     0.4181),
    ("ML Privacy Meter", "privacymeter", "CIFAR-10 CNN", "natural", False, None, 1e-5, "", 4.5571),
    ("ML Privacy Meter", "privacymeter", "CIFAR-10 CNN", "natural", True, 68.51, 1e-5, "not stated (Opacus)", 0.1258),
]
AUDIT_COLUMNS = ["source", "cite", "model", "canaries", "dp", "epsilon", "delta", "accountant", "epsilon_lower_bound"]


# DP generators on MNIST as published (epsilon = 10, delta = 1e-5 unless the row says otherwise).
# GS-WGAN (Chen et al. 2020, Table 1): K = 1000 discriminators, 20,000 generator iterations; its IS uses
# an MNIST classifier; its epsilon: subsampling of shards without replacement, replace-one adjacency.
# DP-GAN revisited (Bie et al. 2023): the abstract's figures (workshop and ICLR-submission versions); the
# table and setting behind them were not checked here. DP-SGD on the discriminator: Poisson, add/remove.
_GENERATORS = [
    ("GS-WGAN", "chen2020gswgan", "Table 1", 10.0, 1e-5, "RDP, subsampling without replacement", "shards",
     "replace-one", 61.34, 9.23, None, "20,000 generator iterations"),
    ("DP-GAN revisited", "bie2023private", "abstract", 10.0, 1e-5, "not checked here", "Poisson", "add/remove",
     13.0, None, 0.950, "not checked here"),
    ("GS-WGAN", "chen2020gswgan", "Table 2 (downstream CNN; table not re-read here)", 10.0, 1e-5,
     "RDP, subsampling without replacement", "shards", "replace-one", None, None, 0.808,
     "20,000 generator iterations"),
    # CSC2412 project (JasonTang99/p2), testing.ipynb: best FID per epsilon of its inversion + DP-VAE grid, on the
    # even digits (its private half). Inception FID against the private set's statistics; epsilon from Opacus's
    # logged values (the notebook interpolates and extrapolates some), Poisson batches of 64, delta = 1e-6.
    ("CSC2412 project", "csc2412latent", "testing.ipynb, best FID per epsilon", 12.7, 1e-6,
     "Opacus (logged; some values extrapolated)", "Poisson", "add/remove", 147.5, 1.70, None,
     "inversion codes + DP-VAE, sigma 0.6, 24,000 steps of batch 64"),
    # DP-GAN revisited, the authors' code (alexbie98/dpgan-revisit), README "Benchmarks": numbers obtained by running
    # its configs, not the paper's tables (which were not read here); they differ from the abstract's 13.0 / 95.0.
    # FID: pytorch-fid (Inception); Acc.: a 2-conv CNN trained 10 epochs on the samples (dpgan/eval/acc.py).
    # epsilon: Opacus RDP (scripts/calc_priv.py), Poisson sampling (Opacus), add/remove. The configs set
    # val_set: test, i.e. the evaluation during training reads the test set.
    ("DP-GAN revisited, code", "bie2023private", "dpgan-revisit README, Benchmarks (mnist-eps10-50dsteps.yaml)",
     10.0, 1e-5, "Opacus RDP (scripts/calc_priv.py)", "Poisson", "add/remove", 19.4, None, 0.930,
     "450,000 D steps, 50 D steps per G step, batch 128, sigma 1.0, C 1.0"),
    ("DP-GAN revisited, code", "bie2023private", "dpgan-revisit README, Benchmarks (mnist-eps10-adaptive.yaml)",
     10.0, 1e-5, "Opacus RDP (scripts/calc_priv.py)", "Poisson", "add/remove", 13.3, None, 0.944,
     "adaptive D steps per G step (config not read here)"),
]
GENERATOR_COLUMNS = ["source", "cite", "where", "epsilon", "delta", "accountant", "sampling", "adjacency",
                     "inception_fid", "inception_score", "downstream_cnn", "training"]


def published_generators() -> pd.DataFrame:
    """Published DP generators on MNIST: Inception FID, IS and downstream CNN accuracy, with their ε's
    sampling and adjacency (an add/remove ε and a replace-one ε are not comparable).

        >>> published_generators()[["source", "adjacency"]].values.tolist()[:2]
        [['GS-WGAN', 'replace-one'], ['DP-GAN revisited', 'add/remove']]
    """
    return pd.DataFrame(_GENERATORS, columns=GENERATOR_COLUMNS)


def published_audits() -> pd.DataFrame:
    """Published one-run audits: the claimed ε (empty without DP) and the audited lower bound.

        >>> float(published_audits()["epsilon_lower_bound"].max())
        5.4814
    """
    return pd.DataFrame(_AUDITS, columns=AUDIT_COLUMNS)


def published(dataset: str) -> pd.DataFrame:
    """The published rows for ``dataset``."""
    df = pd.DataFrame(_ROWS, columns=COLUMNS)
    return df[df["dataset"] == dataset].reset_index(drop=True)
