"""Judging synthetic images: Fréchet distance, Inception Score and downstream accuracy.

* :func:`frechet_distance` of two feature sets (Heusel et al., NeurIPS 2017, Eq. 6), computed by
  ``pytorch_fid``'s ``calculate_frechet_distance``. The features come from the standard FID
  Inception network (:func:`inception_extractor`) when its weights are in ``$TORCH_HOME`` or
  downloadable. Otherwise they come from a classifier trained on the real training set
  (:func:`train_judge`, as GS-WGAN does for MNIST). Every result says which one it used
  (:attr:`Judge.fid_name`): a classifier FID is not comparable with published Inception FIDs.
* :func:`inception_score`: exp E_x KL(p(y|x) || p(y)) (Salimans et al., NeurIPS 2016, Sec. 4),
  here with the real-data classifier's p(y|x). Its maximum is the number of classes.
* :func:`downstream_accuracy`: "train on synthetic, test on real". scikit-learn logistic regression, MLP and
  random forest, and a small CNN, are trained on labelled synthetic images and tested on the real test set
  (Chen et al., GS-WGAN, NeurIPS 2020, Sec. 5).

The judge classifier is trained on the real (private) training set without DP. It only
measures; it is never released with a generator. That is the usual practice, and the chapters say so.

Example::

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> a = rng.normal(size=(2000, 8))
    >>> round(frechet_distance(a, a), 6)
    0.0
    >>> frechet_distance(a, a + 1.0) > 7.5   # a shift of 1 in 8 dimensions: |mu1 - mu2|^2 = 8
    True
    >>> round(inception_score(np.full((10, 10), 0.1)), 6)   # every prediction uniform: IS = 1
    1.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dpnb.params import ParameterError, check_choice, check_each, check_int
from dpnb.store import load_tensors, save_tensors

FID_FEATURES = ("auto", "inception", "classifier")
DOWNSTREAM_MODELS = ("logistic regression", "MLP", "random forest", "CNN")


def _as_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)


def feature_statistics(features: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of an (N, d) feature matrix, the Gaussian that FID fits to each set."""
    f = _as_numpy(features)
    if f.ndim != 2 or len(f) < 2:
        raise ParameterError(f"features must be an (N, d) matrix with N >= 2, got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(features_a: Any, features_b: Any) -> float:
    """Fréchet distance between Gaussians fitted to two (N, d) feature sets (Heusel et al. 2017, Eq. 6).

    ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))``, by ``pytorch_fid.fid_score.calculate_frechet_distance``.
    """
    from pytorch_fid.fid_score import calculate_frechet_distance

    mu_a, s_a = feature_statistics(features_a)
    mu_b, s_b = feature_statistics(features_b)
    return float(max(calculate_frechet_distance(mu_a, s_a, mu_b, s_b), 0.0))


def inception_score(probs: Any, *, splits: int = 1) -> float:
    """exp(E_x KL(p(y|x) || p(y))) of class probabilities (N, classes) (Salimans et al. 2016, Sec. 4).

    With ``splits > 1`` the mean over that many equal chunks, as the original code reports it.
    """
    p = _as_numpy(probs)
    splits = check_int("splits", splits, low=1, high=len(p))
    scores = []
    for chunk in np.array_split(p, splits):
        marginal = chunk.mean(0, keepdims=True)
        kl = (chunk * (np.log(chunk + 1e-12) - np.log(marginal + 1e-12))).sum(1)
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores))


def inception_extractor() -> nn.Module:
    """pytorch-fid's InceptionV3 (2048-d pool features) with the standard FID weights.

    Raises :class:`dpnb.store.WeightsUnavailable` (one line) when the weights are neither in
    ``$TORCH_HOME/hub/checkpoints`` nor downloadable. Inputs are images in [0, 1]; grey images
    are repeated to three channels and resized to 299 px inside.
    """
    import functools
    from unittest import mock

    import pytorch_fid.inception as fid_inception

    from dpnb.store import hub_state_dict

    hub_state_dict(fid_inception.FID_WEIGHTS_URL, what="fid_features='inception': the FID Inception weights",
                   fallback="or use fid_features='classifier' (FID in a classifier's feature space)")
    # pytorch-fid loads the same file again through torch.hub, whose default unpickles arbitrary objects:
    # make that load weights_only too
    safe = functools.partial(torch.hub.load_state_dict_from_url, weights_only=True)
    with mock.patch.object(fid_inception, "load_state_dict_from_url", safe):
        net = fid_inception.InceptionV3([fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], normalize_input=True)
    return _InceptionFeatures(net).eval()


class _InceptionFeatures(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        return self.net(x)[0].flatten(1)


def judge_cnn(*, num_classes: int = 10) -> nn.Sequential:
    """The judge: a small ReLU CNN for 28x28 images in [0, 1]; its 128-d penultimate layer (before the
    ReLU, so that no unit is constant at 0 and the covariance stays full rank) gives the FID features."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def fit_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch_size: int = 128,
                   lr: float = 1e-3, seed: int = 0) -> nn.Module:
    """Non-private Adam training of ``model`` on tensors (used for the judge and the downstream CNN)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(check_int("epochs", epochs, low=1)):
        for idx in torch.randperm(len(x), generator=g).split(batch_size):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 1000) -> torch.Tensor:
    """Logits of ``model`` on ``x``, in batches, in eval mode."""
    model.eval()
    return torch.cat([model(b) for b in x.split(batch_size)])


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((predict(model, x).argmax(1) == y).float().mean())


@dataclass
class Judge:
    """The real-data classifier and the FID feature extractor used to score generators."""

    classifier: nn.Module
    fid_extractor: nn.Module
    fid_name: str  # "Inception FID" or "classifier FID (...)": say which in every table
    test_accuracy: float
    reference: torch.Tensor  # FID features of the real test images

    @torch.no_grad()
    def fid_features(self, x: torch.Tensor, *, batch_size: int = 500) -> torch.Tensor:
        self.fid_extractor.eval()
        return torch.cat([self.fid_extractor(b) for b in x.split(batch_size)])

    def metric_name(self, metric: str) -> str:
        """What a score key means, for results tables: FID says which features, IS says which classifier."""
        return {"fid": self.fid_name, "inception_score": "Inception Score (judge CNN)"}.get(
            metric, f"downstream accuracy ({metric})")

    def score(self, x: torch.Tensor) -> dict[str, float]:
        """FID against the real test set and Inception Score (with the judge) of images ``x`` in [0, 1]."""
        probs = torch.softmax(predict(self.classifier, x), 1)
        return dict(fid=frechet_distance(self.fid_features(x), self.reference),
                    inception_score=inception_score(probs))


def train_judge(train: TensorDataset, test: TensorDataset, *, fid_features: str = "auto", epochs: int = 2,
                seed: int = 0, reference_size: int | None = None) -> Judge:
    """Train the judge CNN on real images in [0, 1]; choose the FID features (``auto``: Inception if available).

    ``fid_features='inception'`` without the weights raises :class:`dpnb.store.WeightsUnavailable`.
    The trained judge is cached in :func:`dpnb.store.cache_dir` (loaded with ``weights_only=True``).
    """
    import hashlib

    from dpnb.store import WeightsUnavailable, cache_dir

    fid_features = check_choice("fid_features", fid_features, FID_FEATURES)
    x, y = train.tensors
    xt, yt = test.tensors
    key = hashlib.sha256(f"{x.shape}{float(x.sum()):.6f}{y.tolist()[:100]}{epochs}{seed}".encode()).hexdigest()[:16]
    path = cache_dir() / f"judge-{key}.pt"
    clf = judge_cnn()
    if path.is_file():
        clf.load_state_dict(load_tensors(path))
        clf.eval()
    else:
        fit_classifier(clf, x, y, epochs=epochs, seed=seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_tensors(clf.state_dict(), path)
    extractor: nn.Module | None = None
    name = "classifier FID (judge CNN features, not Inception)"
    if fid_features in ("auto", "inception"):
        try:
            extractor, name = inception_extractor(), "Inception FID"
        except WeightsUnavailable:
            if fid_features == "inception":
                raise
    if extractor is None:
        extractor = clf[:-2]  # everything up to the 128-d penultimate layer, before its ReLU
    ref = xt if reference_size is None else xt[:reference_size]
    judge = Judge(classifier=clf, fid_extractor=extractor, fid_name=name, test_accuracy=accuracy(clf, xt, yt),
                  reference=torch.empty(0))
    judge.reference = judge.fid_features(ref)
    return judge


def downstream_accuracy(train: TensorDataset, test: TensorDataset, *,
                        models: tuple[str, ...] = DOWNSTREAM_MODELS, cnn_epochs: int = 3,
                        seed: int = 0, validation: TensorDataset | None = None) -> dict[str, float]:
    """Test accuracy on real ``test`` of classifiers trained on (synthetic) ``train``; images in [0, 1].

    Logistic regression, an MLP (one hidden layer of 100) and a random forest (100 trees) from
    scikit-learn on flattened pixels, and :func:`dpnb.models.mnist_cnn` trained with Adam. With
    ``validation`` (real images held out of training) the same CNN is also scored on it, as
    ``"CNN (validation)"``: what a chapter chooses between generators on, leaving the test set alone.
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    from dpnb.models import mnist_cnn

    for m in models:
        check_choice("models", m, DOWNSTREAM_MODELS)
    x, y = train.tensors
    xt, yt = test.tensors
    if len(torch.unique(y)) < 2:
        raise ParameterError("downstream_accuracy needs training labels of at least 2 classes")
    flat, flat_t = x.flatten(1).numpy(), xt.flatten(1).numpy()
    sk = {"logistic regression": lambda: LogisticRegression(max_iter=200),
          "MLP": lambda: MLPClassifier(hidden_layer_sizes=(100,), max_iter=30, early_stopping=False,
                                       random_state=seed),
          "random forest": lambda: RandomForestClassifier(n_estimators=100, n_jobs=-1, random_state=seed)}
    out: dict[str, float] = {}
    import warnings

    for name in [*models, *(["CNN"] if validation is not None and "CNN" not in models else [])]:
        if name == "CNN":
            torch.manual_seed(seed)
            cnn = fit_classifier(mnist_cnn(activation="relu"), x, y, epochs=cnn_epochs, seed=seed)
            if "CNN" in models:
                out[name] = accuracy(cnn, xt, yt)
            if validation is not None:
                out["CNN (validation)"] = accuracy(cnn, *validation.tensors)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ConvergenceWarning: a fixed, short budget on purpose
                out[name] = float(sk[name]().fit(flat, y.numpy()).score(flat_t, yt.numpy()))
    return out


def evaluate_samples(samples: TensorDataset, judge: Judge, test: TensorDataset, *,
                     models: tuple[str, ...] = DOWNSTREAM_MODELS, cnn_epochs: int = 3,
                     seed: int = 0, validation: TensorDataset | None = None) -> dict[str, float]:
    """One row for a generator: FID (``judge.fid_name``), IS and the downstream accuracies of ``samples``
    (with ``validation``, also the CNN's accuracy on it: see :func:`downstream_accuracy`)."""
    x, _ = samples.tensors
    return judge.score(x) | downstream_accuracy(samples, test, models=models, cnn_epochs=cnn_epochs, seed=seed,
                                                validation=validation)


def check_evaluation(*, samples: Any, fid_features: Any, judge_epochs: Any, downstream_models: Any,
                     downstream_cnn_epochs: Any) -> tuple[int, str, int, tuple[str, ...], int]:
    """Validate a chapter's evaluation parameters (one-line :class:`ParameterError` naming the bad one)."""
    return (check_int("samples", samples, low=100, high=100_000),
            check_choice("fid_features", fid_features, FID_FEATURES),
            check_int("judge_epochs", judge_epochs, low=1),
            tuple(check_each("downstream_models", downstream_models, check_choice, DOWNSTREAM_MODELS)),
            check_int("downstream_cnn_epochs", downstream_cnn_epochs, low=1))
