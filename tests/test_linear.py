"""dpnb.linear: exact DP-SGD for a linear softmax model without per-example gradients."""

import math

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dpnb import privacy
from dpnb.linear import clipped_gradient_sum, input_gram, per_example_grad_norms, train_linear
from dpnb.params import ParameterError
from dpnb.train import TrainConfig


def _per_example_grads(model: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example gradients of (W, b), flattened, by torch.func (the slow, obvious way)."""
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xi, yi):
        return nn.functional.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    g = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    return torch.cat([g["weight"].flatten(1), g["bias"]], dim=1)


@pytest.fixture
def problem():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Linear(7, 4)
    x = torch.randn(64, 7, generator=g) * 3
    y = torch.randint(0, 4, (64,), generator=g)
    return model, x, y


def test_norms_match_explicit_per_example_gradients(problem):
    model, x, y = problem
    explicit = _per_example_grads(model, x, y)
    with torch.no_grad():
        delta = torch.softmax(model(x), 1) - nn.functional.one_hot(y, 4)
    torch.testing.assert_close(per_example_grad_norms(inputs=x, logit_grads=delta), explicit.norm(dim=1),
                               rtol=1e-5, atol=1e-6)


def test_clipped_sum_matches_explicit_clipping(problem):
    model, x, y = problem
    explicit = _per_example_grads(model, x, y)
    norms = explicit.norm(dim=1)
    C = float(norms.median())
    assert (norms > C).any() and (norms < C).any()  # both branches of the clipping are exercised
    clipped = explicit * (C / norms).clamp(max=1)[:, None]
    gw, gb, _ = clipped_gradient_sum(model, x, y, max_grad_norm=C)
    torch.testing.assert_close(torch.cat([gw.flatten(), gb]), clipped.sum(0), rtol=1e-4, atol=1e-5)


def test_views_are_averaged_then_clipped_once(problem):
    """Augmentation multiplicity: an example's gradient is the mean over its K views, clipped once."""
    model, x, y = problem
    views = torch.stack([x, x.flip(1), 0.5 * x], dim=1)                     # (B, 3, d)
    per_view = torch.stack([_per_example_grads(model, views[:, k], y) for k in range(3)], dim=1)
    mean = per_view.mean(1)
    C = float(mean.norm(dim=1).median())
    gw, gb, logits = clipped_gradient_sum(model, views, y, max_grad_norm=C)
    clipped = mean * (C / mean.norm(dim=1)).clamp(max=1)[:, None]
    torch.testing.assert_close(torch.cat([gw.flatten(), gb]), clipped.sum(0), rtol=1e-4, atol=1e-5)
    assert logits.shape == (64, 3, 4)
    with torch.no_grad():
        delta = torch.softmax(model(views), -1) - nn.functional.one_hot(y, 4)[:, None]
    torch.testing.assert_close(per_example_grad_norms(inputs=views, logit_grads=delta), mean.norm(dim=1),
                               rtol=1e-5, atol=1e-6)
    # the input part of the norms, computed once for the data set (as train_linear does), gives the same sums
    gram = input_gram(views, chunk=5)
    assert gram.shape == (64, 3, 3)
    gw2, gb2, _ = clipped_gradient_sum(model, views, y, max_grad_norm=C, gram=gram)
    torch.testing.assert_close(torch.cat([gw2.flatten(), gb2]), clipped.sum(0), rtol=1e-4, atol=1e-5)
    single = input_gram(x)
    assert single.shape == (64, 1, 1)
    torch.testing.assert_close(single.flatten(), x.pow(2).sum(1) + 1)


def test_one_step_adds_noise_of_std_sigma_C_over_batch():
    """q = 1 (batch = dataset): the update is exactly -(clipped sum + N(0, σ²C²)) / N."""
    g = torch.Generator().manual_seed(1)
    n, d, sigma, C = 50, 2000, 2.0, 0.1
    x, y = torch.randn(n, d, generator=g), torch.randint(0, 10, (n,), generator=g)
    cfg = TrainConfig(epochs=1, batch_size=n, lr=1.0, momentum=0.0, noise_multiplier=sigma, max_grad_norm=C)
    run = train_linear(TensorDataset(x, y), None, cfg, num_classes=10, progress=False)
    assert run.steps == 1 and run.sample_rate == 1.0
    zero = nn.Linear(d, 10)
    nn.init.zeros_(zero.weight), nn.init.zeros_(zero.bias)
    gw, gb, _ = clipped_gradient_sum(zero, x, y, max_grad_norm=C)
    update = torch.cat([run.model.weight.detach().flatten(), run.model.bias.detach()])
    noise = -update * n - torch.cat([gw.flatten(), gb])
    assert noise.std().item() == pytest.approx(sigma * C, rel=0.03)
    assert abs(noise.mean().item()) < 4 * sigma * C / math.sqrt(noise.numel())


def test_target_epsilon_is_met_and_accounted_like_opacus_loader():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1000, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    cfg = TrainConfig(epochs=4, batch_size=300, lr=2.0, momentum=0.9, target_epsilon=3.0, max_grad_norm=1.0, seed=3)
    run = train_linear(TensorDataset(x, y), TensorDataset(x, y), cfg, num_classes=2, progress=False)
    assert run.steps == 4 * math.ceil(1000 / 300) and run.sample_rate == pytest.approx(1 / 4)
    assert run.epsilon["prv"] == pytest.approx(3.0, abs=0.01)
    assert run.epsilon["prv"] == pytest.approx(privacy.prv_epsilon(noise_multiplier=run.noise_multiplier,
                                                                   sample_rate=0.25, steps=16, delta=1e-5))
    assert run.test_accuracy > 0.85
    assert list(run.history["epoch"]) == [1, 2, 3, 4]
    again = train_linear(TensorDataset(x, y), TensorDataset(x, y), cfg, num_classes=2, progress=False)
    torch.testing.assert_close(again.model.weight, run.model.weight)  # same seed, same run


def test_a_batch_in_chunks_gives_the_run_of_the_whole_batch(monkeypatch: pytest.MonkeyPatch):
    """On a CPU a DP batch is processed in chunks of CHUNK_BYTES: chunks of 3 examples give the same run
    (up to float rounding) as one chunk, with two views, the same noise and the same accuracy history."""
    import dpnb.linear as linear

    g = torch.Generator().manual_seed(6)
    two = torch.randn(400, 2, 5, generator=g)
    y = (two[:, 0, 0] > 0).long()
    cfg = TrainConfig(epochs=2, batch_size=80, lr=1.0, momentum=0.9, target_epsilon=2.0, max_grad_norm=0.5, seed=2)
    whole = train_linear(TensorDataset(two, y), TensorDataset(two, y), cfg, views=2, test_views=2, num_classes=2,
                         progress=False)
    monkeypatch.setattr(linear, "CHUNK_BYTES", 3 * 2 * 5 * 4)  # three examples of 2 x 5 float32 values
    chunked = train_linear(TensorDataset(two, y), TensorDataset(two, y), cfg, views=2, test_views=2, num_classes=2,
                           progress=False)
    torch.testing.assert_close(chunked.model.weight, whole.model.weight, rtol=1e-5, atol=1e-6)
    pd.testing.assert_series_equal(chunked.history["train_accuracy"], whole.history["train_accuracy"])


def test_views_train_and_test_time_augmentation():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(600, 4, generator=g)
    y = (x[:, 0] - x[:, 3] > 0).long()
    two = torch.stack([x, x + 0.1 * torch.randn(x.shape, generator=g)], dim=1)   # (N, 2, d)
    cfg = TrainConfig(epochs=3, batch_size=100, lr=1.0, momentum=0.9, target_epsilon=4.0, max_grad_norm=1.0)
    one = train_linear(TensorDataset(x, y), TensorDataset(x, y), cfg, num_classes=2, progress=False)
    run = train_linear(TensorDataset(two, y), TensorDataset(two, y), cfg, views=2, test_views=2, num_classes=2,
                       progress=False)
    assert run.noise_multiplier == one.noise_multiplier and run.epsilon == one.epsilon  # ε does not depend on K
    assert run.test_accuracy > 0.85 and run.model.weight.shape == (2, 4)
    plain = train_linear(TensorDataset(two, y), TensorDataset(x, y), cfg, views=2, num_classes=2, progress=False)
    assert plain.test_accuracy > 0.85
    with pytest.raises(ParameterError, match="views and test_views"):
        train_linear(TensorDataset(two, y), TensorDataset(two, y), cfg, views=2, num_classes=2, progress=False)
    nonprivate = train_linear(TensorDataset(two, y), TensorDataset(x, y),
                              TrainConfig(epochs=2, batch_size=50, dp=False),
                              views=2, num_classes=2, progress=False)
    assert nonprivate.test_accuracy > 0.9


def test_nonprivate_learns_and_bad_input_is_named():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(500, 3, generator=g)
    y = (x[:, 2] > 0).long()
    run = train_linear(TensorDataset(x, y), TensorDataset(x, y),
                       TrainConfig(epochs=5, batch_size=50, lr=0.5, dp=False), num_classes=2, progress=False)
    assert run.test_accuracy > 0.95 and run.noise_multiplier is None and "epsilon_prv" not in run.history
    assert run.model.weight.shape == (2, 3)
    wider = train_linear(TensorDataset(x, y), None, TrainConfig(epochs=1, batch_size=50, dp=False), num_classes=5,
                         progress=False)
    assert wider.model.weight.shape == (5, 3)  # the class count is the caller's, never read off the labels
    with pytest.raises(ParameterError, match="batch_size"):
        train_linear(TensorDataset(x, y), None, TrainConfig(batch_size=501, noise_multiplier=1.0), num_classes=2,
                     progress=False)
    with pytest.raises(ParameterError, match="optimizer"):
        train_linear(TensorDataset(x, y), None, TrainConfig(optimizer="adam", noise_multiplier=1.0), num_classes=2,
                     progress=False)


def test_averaged_iterates_are_post_processing_of_the_same_run():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(800, 5, generator=g)
    y = (x[:, 0] - x[:, 2] > 0).long()
    cfg = TrainConfig(epochs=3, batch_size=100, lr=2.0, momentum=0.9, target_epsilon=2.0, max_grad_norm=1.0, seed=1)
    data = TensorDataset(x, y)
    plain = train_linear(data, data, cfg, num_classes=2, progress=False)
    averaged = train_linear(data, data, cfg, num_classes=2, ema_decay=0.9, progress=False)
    # the same iterates (same noise, same ε); only what is evaluated and returned differs
    assert list(averaged.history["test_accuracy_raw"]) == list(plain.history["test_accuracy"])
    assert averaged.epsilon == plain.epsilon
    assert not torch.allclose(averaged.model.weight, plain.model.weight)
    last = train_linear(data, data, cfg, num_classes=2, ema_decay=0.0, progress=False)  # decay 0: the last iterate
    torch.testing.assert_close(last.model.weight, plain.model.weight)
    with pytest.raises(ParameterError, match="ema_decay"):
        train_linear(data, data, cfg, num_classes=2, ema_decay=1.5, progress=False)


def test_epsilon_every_leaves_the_run_and_its_final_epsilon_unchanged():
    """ε in the history every k epochs (and after the last) only: the same iterates and the same final ε."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(600, 4, generator=g)
    y = (x[:, 1] > 0).long()
    data = TensorDataset(x, y)
    cfg = TrainConfig(epochs=5, batch_size=100, lr=1.0, momentum=0.9, target_epsilon=2.0, max_grad_norm=1.0, seed=4)
    every = train_linear(data, data, cfg, num_classes=2, ema_decay=0.9, progress=False)
    sparse = train_linear(data, data, cfg, num_classes=2, ema_decay=0.9, epsilon_every=2, progress=False)
    last = train_linear(data, data, cfg, num_classes=2, ema_decay=0.9, epsilon_every=None, progress=False)
    assert every.epsilon == sparse.epsilon == last.epsilon
    torch.testing.assert_close(last.model.weight, every.model.weight, rtol=0, atol=0)
    assert list(last.history["test_accuracy"]) == list(every.history["test_accuracy"])
    assert sparse.history["epsilon_prv"].notna().tolist() == [False, True, False, True, True]
    assert last.history["epsilon_prv"].notna().tolist() == [False] * 4 + [True]
    assert every.history["epsilon_prv"].is_monotonic_increasing
    with pytest.raises(ParameterError, match="epsilon_every"):
        train_linear(data, data, cfg, num_classes=2, epsilon_every=0, progress=False)


def test_the_average_and_the_iterate_are_scored_in_one_pass_as_each_alone():
    from torch import nn

    from dpnb.linear import _accuracy

    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(50, 3, 7, generator=g), torch.randint(0, 4, (50,), generator=g)
    a, b = nn.Linear(7, 4), nn.Linear(7, 4)
    both = _accuracy([a, b], x, y, batch_size=16)
    for model, score in zip([a, b], both):
        probs = torch.softmax(model(x), -1).mean(1)
        assert score[1] == pytest.approx(float((probs.argmax(1) == y).float().mean()))
        assert score[0] == pytest.approx(float(nn.functional.nll_loss(probs.log(), y)), rel=1e-5)
