"""The parameters of every chapter, declared once: a rule per parameter (:mod:`dpnb.params`).

A chapter's ``parameters`` cell holds its book-profile values; its first code cell runs
``globals().update(chapters.parameters("mnist", globals()))``, which checks every parameter
(a bad ``papermill -p`` value stops there with a one-line message naming it and its range) and
hands back the checked values (numbers as numbers, ``device`` resolved). Choice lists and
dataset sizes come from the modules that use them, so a new loss or gradient mode is accepted
where it is implemented. ``tests/test_profiles.py`` checks that every parameter of every chapter
has a rule and every rule a parameter.

Example::

    >>> from dpnb import chapters
    >>> book = dict(dataset_size=60_000, batch_size=256, noise_multiplier=1.1, epochs="60", delta=1e-5,
    ...             target_epsilon=3.0, max_epochs=100, curve_points=25, crosscheck_sigmas=[1.1],
    ...             crosscheck_rates=[0.01], crosscheck_steps=[100], abadi_lot=600, abadi_sigmas=[4.0],
    ...             profile="book")
    >>> chapters.parameters("budget", book)["epochs"]
    60.0
    >>> chapters.parameters("budget", dict(book, batch_size=70_000))
    Traceback (most recent call last):
    ...
    dpnb.params.ParameterError: batch_size must be an integer in [1, 60000], got 70000
"""

from __future__ import annotations

from typing import Any

from dpnb import cost, gan, metrics, models, privacy, train
from dpnb.data import TEST_SIZES, TRAIN_SIZES
from dpnb.params import Choice, Device, Each, Flag, Int, Maybe, Number, ParameterError, Positive, Rule, Unless, validate

__all__ = ["PROFILES", "RULES", "KEPT_BY_TINY", "rules", "parameters", "shrinks", "code_path"]

PROFILES = ("smoke", "book", "gpu", "gpu-tiny")  # book/profiles.yml; "book" is the parameters cell, "gpu-tiny"
# the gpu profile under its --tiny overlay (see shrinks)
PROBABILITY = Number(0, 1, open="both")  # delta
MNIST, CIFAR = TRAIN_SIZES["mnist"], TRAIN_SIZES["cifar10"]
#: How the CIFAR-10 chapter normalises ScatterNet features: per-image GroupNorm in G groups, or
#: per channel with DP statistics (:mod:`dpnb.normalization`)
SCATTER_NORMALIZATIONS = tuple(f"groups-{g}" for g in (1, 3, 9, 27, 81, 243)) + ("private",)


def _evaluation() -> dict[str, Rule]:
    """The generative chapters' evaluation settings (:mod:`dpnb.metrics`)."""
    return dict(samples=Int(100, 100_000), fid_features=Choice(metrics.FID_FEATURES), judge_epochs=Int(1),
                downstream_models=Each(Choice(metrics.DOWNSTREAM_MODELS)), downstream_cnn_epochs=Int(1))


def _cifar_architectures(p: dict[str, Any]) -> list[str]:
    from dpnb.models import cifar_architectures

    return list(cifar_architectures(p["cnn_width"]))


def _flowers_sizes(p: dict[str, Any]) -> tuple[int, int, int]:
    from dpnb.transfer import FLOWERS_SPLIT_SIZES

    return tuple(min(n, p["limit"] or n) for n in FLOWERS_SPLIT_SIZES[p["split"]])  # type: ignore[return-value]


def _flowers_features() -> tuple[str, ...]:
    from dpnb.transfer import FEATURES

    return FEATURES



class _OneWhenGiven(Rule):
    """``rule``, and a single value when the parameter ``other`` (checked before) is set: a stated recipe's σ
    has one target ε, which labels its run."""

    def __init__(self, other: str, rule: Rule) -> None:
        self.other, self.rule = other, rule

    def __call__(self, name: str, value: Any, done: dict[str, Any]) -> Any:
        checked = self.rule(name, value, done)
        if done.get(self.other) is not None and len(checked) != 1:
            raise ParameterError(f"{name} must have one value (the target of the recipe whose {self.other} is "
                                 f"given), got {list(checked)}")
        return checked


RULES: dict[str, dict[str, Rule]] = {
    "budget": dict(
        dataset_size=Int(1), batch_size=Int(1, high=lambda p: p["dataset_size"]), noise_multiplier=Positive(),
        epochs=Positive(), delta=PROBABILITY, target_epsilon=Positive(), max_epochs=Positive(),
        curve_points=Int(2, 1000), crosscheck_sigmas=Each(Number(0.1, 100)),
        crosscheck_rates=Each(Number(0, 1, open="low")), crosscheck_steps=Each(Int(1, 1_000_000)),
        abadi_lot=Int(1, high=lambda p: p["dataset_size"]), abadi_sigmas=Each(Number(0.3, 100)),
        profile=Choice(PROFILES)),
    "mnist": dict(
        train_limit=Maybe(Int(100, MNIST)), epochs=Int(1),
        batch_size=Int(1, high=lambda p: p["train_limit"] or MNIST), learning_rate=Positive(),
        momentum=Number(0, 1, open="high"), max_grad_norm=Positive(), delta=PROBABILITY,
        target_epsilons=Each(Positive()), headline_epsilon=Positive(), seeds=Each(Int(0)),
        epochs_study=Each(Int(1, 1000)), validation_size=Int(100, high=lambda p: (p["train_limit"] or MNIST) // 2),
        accountant=Choice(privacy.ACCOUNTANTS),
        grad_sample_mode=Choice(train.GRAD_SAMPLE_MODES), baseline_epochs=Int(1),
        baseline_batch_size=Int(1, high=lambda p: p["train_limit"] or MNIST), baseline_learning_rate=Positive(),
        sweep_epsilon=Positive(), sweep_epochs=Int(1),
        sweep_limit=Int(100, high=lambda p: (p["train_limit"] or MNIST) - p["validation_size"]),
        sweep_max_grad_norms=Each(Positive()), sweep_learning_rates=Each(Positive()),
        sweep_batch_sizes=Each(Int(1, high=lambda p: p["sweep_limit"])),
        cost_batch_sizes=Each(Int(1, high=lambda p: p["train_limit"] or MNIST)),
        cost_methods=Each(Choice(cost.METHODS)), cost_examples=Maybe(Int(1)), device=Device(), seed=Int(0),
        profile=Choice(PROFILES)),
    "cifar10": dict(
        epsilon=Positive(), delta=PROBABILITY, seed=Int(0), seeds=Each(Int(0)), device=Device(),
        validation_size=Int(0, 10_000), cnn_limit=Maybe(Int(20, high=lambda p: CIFAR - p["validation_size"])),
        test_limit=Maybe(Int(20, TEST_SIZES["cifar10"])), cnn_width=Int(8, 256),
        e2e_limit=Maybe(Int(20, high=lambda p: CIFAR - p["validation_size"])), e2e_epochs=Int(1),
        e2e_batch_size=Int(1, high=lambda p: p["e2e_limit"] or CIFAR - p["validation_size"]),
        e2e_learning_rate=Positive(), e2e_baseline_learning_rate=Positive(), cnn_epochs=Int(1),
        cnn_batch_size=Int(1, high=lambda p: p["cnn_limit"] or CIFAR), cnn_learning_rate=Positive(),
        cnn_max_grad_norm=Positive(), baseline_learning_rate=Positive(),
        architectures=Each(Choice(_cifar_architectures)), smoothnet_width=Number(0.125, 16),
        smoothnet_depth=Number(1, 10), smoothnet_epochs=Int(1),
        smoothnet_batch_size=Int(1, high=lambda p: p["cnn_limit"] or CIFAR), smoothnet_learning_rates=Each(Positive()),
        scatter_limit=Maybe(Int(100, CIFAR)),
        search_learning_rates=Each(Positive(), empty=True),
        search_normalizations=Each(Choice(SCATTER_NORMALIZATIONS), empty=True),
        scatter_epochs=Int(1), scatter_batch_size=Int(1, high=lambda p: p["scatter_limit"] or CIFAR),
        scatter_learning_rate=Positive(), scatter_max_grad_norm=Positive(),
        scatter_normalization=Choice(SCATTER_NORMALIZATIONS), scatter_stats_noise_multiplier=Positive(),
        scatter_stats_mean_bound=Positive(), scatter_stats_square_bound=Positive(),
        scatter_ema_decay=Maybe(Number(0, 1, open="high")), scatter_flips=Flag(), scatter_cnn_epochs=Int(1),
        scatter_cnn_batch_size=Int(1, high=lambda p: p["scatter_limit"] or CIFAR),
        scatter_cnn_learning_rate=Positive(), scatter_cnn_kernel=Choice((1, 3)),
        scatter_cnn_normalization=Choice(SCATTER_NORMALIZATIONS), scatter_cnn_flips=Flag(),
        scale_model=Choice(models.SCALE_MODELS),
        scale_epochs=Int(1), scale_steps=Maybe(Int(1)), scale_batch_size=Int(1, high=lambda p: p["cnn_limit"] or CIFAR),
        scale_learning_rates=Each(Positive()), scale_momentum=Number(0, 1, open="high"),
        scale_max_grad_norm=Positive(), scale_noise_multiplier=Maybe(Positive()), scale_multiplicity=Int(0, 64),
        scale_equal_compute=Flag(), scale_epsilons=_OneWhenGiven("scale_noise_multiplier", Each(Positive())),
        ema_decay=Number(0, 1, open="high"),
        backbone_weights=Choice(["imagenet", "none"]), backbone_limit=Int(20, CIFAR), backbone_epochs=Int(1),
        backbone_image_size=Choice([32, 64, 96, 128, 224]),
        profile=Choice(PROFILES)),
    "flowers": dict(
        split=Choice(["official", "large"]), limit=Maybe(Int(20)), epochs=Int(1),
        batch_size=Int(1, high=lambda p: _flowers_sizes(p)[0]), learning_rate=Positive(),
        momentum=Number(0, 1, open="high"), dp=Flag(), noise_multiplier=Maybe(Positive()),
        target_epsilon=Unless("noise_multiplier", Positive()), max_grad_norm=Positive(), delta=PROBABILITY,
        features=Choice(_flowers_features()), backbone_weights=Choice(["imagenet", "none"]), image_size=Int(32, 128),
        seed=Int(0), seeds=Each(Int(0)), tune=Flag(), sweep_learning_rates=Each(Positive()),
        sweep_max_grad_norms=Each(Positive()), deep_learning_rates=Each(Positive()), baseline_epochs=Int(1),
        baseline_learning_rate=Positive(), deep_learning_rate=Positive(),
        stats_epsilons=Each(Positive()), stats_batch_sizes=Each(Int(1, high=lambda p: _flowers_sizes(p)[0])),
        cost_batch_sizes=Each(Int(1, high=lambda p: _flowers_sizes(p)[0])), cost_methods=Each(Choice(cost.METHODS)),
        cost_steps=Int(1), device=Device(), profile=Choice(PROFILES)),
    "dpgan": dict(
        limit=Maybe(Int(200, MNIST)), loss=Choice(gan.LOSSES), steps=Int(1),
        batch_size=Int(1, high=lambda p: p["limit"] or MNIST), epsilons=Each(Positive()),
        variants=Each(Choice(gan.LOSSES)), variant_epsilon=Positive(), variant_steps=Int(1),
        n_critic=Int(1, high=lambda p: min(p["steps"], p["variant_steps"])),
        critic_sweep=Each(Int(1, high=lambda p: p["steps"])), nonprivate_steps=Int(1), max_grad_norm=Positive(),
        delta=PROBABILITY, lr_d=Positive(), lr_g=Positive(),
        width=Int(4, 256), z_dim=Int(1, 1024), **_evaluation(),
        validation_size=Int(100, high=lambda p: (p["limit"] or MNIST) // 2), seed=Int(0), seeds=Each(Int(0)),
        device=Device(), profile=Choice(PROFILES)),
    "gswgan": dict(
        limit=Maybe(Int(200, MNIST)), num_discriminators=Int(2, high=lambda p: (p["limit"] or MNIST) // 2),
        pretrain_steps=Int(0), pretrain_lr=Positive(), iterations=Int(1), critic_iters=Int(1),
        batch_size=Int(1, high=lambda p: (p["limit"] or MNIST) // p["num_discriminators"]),
        noise_multiplier=Maybe(Positive()), target_epsilon=Unless("noise_multiplier", Positive()),
        max_grad_norm=Positive(), delta=PROBABILITY, lr=Positive(), width=Int(4, 256), z_dim=Int(1, 1024),
        nonprivate=Flag(), **_evaluation(), seed=Int(0), seeds=Each(Int(0)), device=Device(),
        profile=Choice(PROFILES)),
    "latent": dict(
        limit=Maybe(Int(1000, MNIST)), split_seed=Int(0), autoencoder_epochs=Int(1), autoencoder_lr=Positive(),
        fashion_autoencoder=Choice(["conv", "mlp"]), fashion_epochs=Int(1), inversion_steps=Int(1),
        inversion_lr=Positive(), epsilons=Each(Positive()), delta=PROBABILITY, even_delta=PROBABILITY,
        clip_quantile=Number(0, 1, open="low"), components=Int(1, 64), lloyd_iterations=Int(1, 100),
        vae_epochs=Int(1), vae_batch_size=Int(1, 10_000), vae_lr=Positive(), vae_max_grad_norm=Positive(),
        gswgan_discriminators=Int(2, 10_000), gswgan_pretrain_steps=Int(0), gswgan_iterations=Int(1),
        gswgan_critic_iters=Int(1), gswgan_batch_size=Int(1, 1000), gswgan_lr=Positive(),
        gan_loss=Choice(gan.LOSSES), gan_steps=Int(1), gan_critic=Int(1, high=lambda p: p["gan_steps"]),
        gan_batch_size=Int(1, 10_000), gan_lr=Positive(),
        merf_features=Int(2, 100_000), merf_lengthscale=Positive(), merf_latent_lengthscale=Positive(),
        merf_steps=Int(1), samples_per_class=Int(10, 10_000), seeds=Each(Int(0)), fid_features=Choice(
            metrics.FID_FEATURES), judge_epochs=Int(1), downstream_models=Each(Choice(metrics.DOWNSTREAM_MODELS)),
        downstream_cnn_epochs=Int(1), profile=Choice(PROFILES)),
}


def _audit_rules() -> dict[str, Rule]:
    from dpnb import audit

    return audit.RULES


def rules(chapter: str) -> dict[str, Rule]:
    """The rules of ``chapter``'s parameters, in the order they are checked."""
    if chapter == "audit":
        return _audit_rules()
    if chapter not in RULES:
        raise ParameterError(f"chapter must be one of {', '.join(map(repr, [*RULES, 'audit']))}; got {chapter!r}")
    return RULES[chapter]


def parameters(chapter: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """``chapter``'s parameters taken from ``namespace`` (a notebook's globals), checked; see :func:`rules`."""
    return validate(rules(chapter), namespace)



#: Numbers that choose which model or mechanism runs rather than how long: the ``--tiny`` overlay
#: of the gpu profile keeps them (as it keeps every string and flag).
KEPT_BY_TINY = frozenset({
    "image_size", "width", "cnn_width", "z_dim", "num_discriminators", "critic_iters", "n_critic", "gan_critic",
    "gswgan_discriminators", "gswgan_critic_iters", "merf_features", "components", "noise_multiplier",
    "scatter_stats_noise_multiplier", "scatter_stats_mean_bound", "scatter_stats_square_bound",
    "scatter_ema_decay", "ema_decay", "max_grad_norm", "cnn_max_grad_norm", "scatter_max_grad_norm",
    "vae_max_grad_norm", "delta", "even_delta", "split_seed", "smoothnet_width", "smoothnet_depth",
    "scale_noise_multiplier", "scale_max_grad_norm", "scale_momentum", "backbone_image_size", "scatter_cnn_kernel",
})


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def shrinks(name: str, full: Any, small: Any) -> str | None:
    """Why ``small`` is not a shrunk ``full`` (None when it is): what ``--tiny`` may do to a gpu value.

    A number may go down (any number may replace None, "all the data"); a list of numbers (seeds, ε,
    batch sizes) may get shorter, its numbers no larger than the largest of ``full``; strings, flags,
    lists of names (methods, models, losses) and :data:`KEPT_BY_TINY` stay.

        >>> shrinks("epochs", 40, 1), shrinks("seeds", [0, 1, 2], [0]), shrinks("limit", None, 600)
        (None, None, None)
        >>> shrinks("scale_model", "wrn-16-4", "cnn")
        'scale_model: the tiny overlay keeps it (wrn-16-4), got cnn'
    """
    kept = f"{name}: the tiny overlay keeps it ({full}), got {small}"
    if name in KEPT_BY_TINY or isinstance(full, (str, bool)) or isinstance(small, (str, bool)):
        return None if small == full else kept
    if full is None:
        return None if _number(small) else kept
    if _number(full):
        lower = _number(small) and small <= full
        return None if lower else f"{name}: the tiny overlay may only lower it ({full}), got {small}"
    if isinstance(full, list) and any(isinstance(v, str) for v in full):  # methods, models, losses: code
        return None if small == full else kept
    if isinstance(full, list) and isinstance(small, list) and 0 < len(small) <= len(full):
        top = max((v for v in full if _number(v)), default=None)
        if top is not None and all(_number(v) and v <= top for v in small):
            return None
    return f"{name}: the tiny overlay may only shorten the list {full}, got {small}"


def code_path(parameters: dict[str, Any]) -> dict[str, Any]:
    """The parameters that choose which code runs: strings, flags, lists holding strings and
    :data:`KEPT_BY_TINY`; two runs that agree on these execute the same code on different sizes.

        >>> code_path(dict(epochs=40, scale_model="wrn-16-4", width=64, seeds=[0], methods=["ghost"], profile="gpu"))
        {'scale_model': 'wrn-16-4', 'width': 64, 'methods': ['ghost']}
    """
    def chooses(name: str, v: Any) -> bool:
        return (name in KEPT_BY_TINY or isinstance(v, (str, bool))
                or (isinstance(v, list) and any(isinstance(x, str) for x in v)))

    return {k: v for k, v in parameters.items() if k != "profile" and chooses(k, v)}
