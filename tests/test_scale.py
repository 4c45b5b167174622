"""dpnb.scale: augmentation multiplicity keeps one clipped gradient per example; EMA; weight standardisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from dpnb import scale


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.Tanh(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3))


def test_augmult_gives_one_clipped_gradient_per_example() -> None:
    model = small_cnn()
    g = torch.Generator().manual_seed(0)
    images, y = torch.rand(5, 3, 8, 8, generator=g), torch.tensor([0, 1, 2, 0, 1])
    x = scale.augment(images, multiplicity=4, generator=g)
    assert x.shape == (5, 4, 3, 8, 8)
    C = 0.05
    total, norms = scale.clipped_gradient_sum(model, x, y, max_grad_norm=C)
    # by hand: each example's gradient is the gradient of its mean loss over the 4 views, clipped once
    expected = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    for i in range(5):
        model.zero_grad()
        F.cross_entropy(model(x[i]), y[i].repeat(4)).backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters()}
        norm = torch.sqrt(sum(v.pow(2).sum() for v in grads.values()))
        assert norms[i] == pytest.approx(float(norm), rel=1e-4)
        for k in expected:
            expected[k] += grads[k] * min(1.0, C / (float(norm) + 1e-6))
    for k in expected:
        torch.testing.assert_close(total[k], expected[k], atol=1e-6, rtol=1e-4)
    # each example moves the sum by at most C, however many views it has
    without_last, _ = scale.clipped_gradient_sum(model, x[:4], y[:4], max_grad_norm=C)
    diff = torch.sqrt(sum((total[k] - without_last[k]).pow(2).sum() for k in total))
    assert float(diff) <= C + 1e-6


def test_augmult_does_not_change_the_privacy_accounting() -> None:
    images, y = torch.rand(64, 3, 8, 8), torch.arange(64) % 3
    ds = TensorDataset(images, y)
    runs = [scale.train_augmult(small_cnn(), ds, None, epochs=1, batch_size=16, lr=0.1, max_grad_norm=1.0,
                                delta=1e-5, noise_multiplier=1.0, multiplicity=k, progress=False) for k in (0, 4)]
    assert runs[0]["sample_rate"] == runs[1]["sample_rate"] == 16 / 64
    assert runs[0]["steps"] == runs[1]["steps"] == 4
    assert runs[0]["epsilon_prv"] == runs[1]["epsilon_prv"]


def test_augment_views_are_crops_and_flips_of_the_image() -> None:
    img = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    views = scale.augment(img, multiplicity=3, generator=torch.Generator().manual_seed(1), pad=0)
    for k in range(3):  # pad 0: every view is the image or its mirror
        for i in range(2):
            v = views[i, k]
            assert torch.equal(v, img[i]) or torch.equal(v, img[i].flip(-1))
    assert torch.equal(scale.augment(img, multiplicity=0, generator=torch.Generator())[:, 0], img)


def test_ema_is_the_exponential_average_of_the_iterates() -> None:
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = scale.EMA(model, decay=0.5)
    for value in (1.0, 2.0):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model)
    # 0 -> 0.5*0 + 0.5*1 = 0.5 -> 0.5*0.5 + 0.5*2 = 1.25
    torch.testing.assert_close(ema.average.weight, torch.full((1, 2), 1.25))
    assert not ema.average.weight.requires_grad
    with pytest.raises(ValueError, match="ema_decay"):
        scale.EMA(model, decay=1.0)


def test_ema_warmup_follows_the_recent_iterates() -> None:
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    plain, warm = scale.EMA(model, decay=0.99), scale.EMA(model, decay=0.99, warmup=True)
    assert warm.current_decay == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    with torch.no_grad():
        model.weight.fill_(1.0)
    plain.update(model)
    warm.update(model)
    torch.testing.assert_close(plain.average.weight, torch.full((1, 2), 0.01))
    torch.testing.assert_close(warm.average.weight, torch.full((1, 2), 0.9))
    assert warm.current_decay == pytest.approx(2 / 11)
    for _ in range(2000):
        warm.update(model)
    assert warm.current_decay == 0.99  # the schedule reaches the decay and stays there


def test_weight_standardisation() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3)
    ws = scale.standardize_weights(nn.Sequential(conv))[0]
    assert isinstance(ws, scale.WSConv2d)
    x = torch.rand(2, 3, 6, 6)
    w = ws.weight
    w_std = (w - w.mean((1, 2, 3), keepdim=True)) / torch.sqrt(w.var((1, 2, 3), keepdim=True, unbiased=False) + 1e-5)
    torch.testing.assert_close(ws(x), F.conv2d(x, w_std, ws.bias))
    # invariant to shifting and scaling each filter
    with torch.no_grad():
        before = ws(x)
        ws.weight.mul_(3.0).add_(0.7)
    torch.testing.assert_close(ws(x), before, atol=5e-3, rtol=5e-3)  # up to the 1e-5 in the variance


def test_steps_run_exactly_as_stated_and_ema_reads_the_same_run() -> None:
    images, y = torch.rand(64, 3, 8, 8), torch.arange(64) % 3
    ds = TensorDataset(images, y)
    run = scale.train_augmult(small_cnn(), ds, ds, steps=6, batch_size=16, lr=0.1, max_grad_norm=1.0,
                              delta=1e-5, noise_multiplier=1.0, ema_decay=0.9, progress=False)
    assert run["steps"] == 6 and list(run["history"]["steps"]) == [4, 6]  # a pass of 4 steps, then 2
    plain = scale.train_augmult(small_cnn(), ds, ds, steps=6, batch_size=16, lr=0.1, max_grad_norm=1.0,
                                delta=1e-5, noise_multiplier=1.0, progress=False)
    # the average is post-processing: the iterate is the one a run without EMA ends at
    for a, b in zip(run["raw_model"].parameters(), plain["model"].parameters()):
        torch.testing.assert_close(a, b)
    assert run["test_accuracy_raw"] == plain["test_accuracy"]
    with pytest.raises(Exception, match="exactly one of epochs and steps"):
        scale.train_augmult(small_cnn(), ds, None, epochs=1, steps=4, batch_size=16, lr=0.1, max_grad_norm=1.0,
                            delta=1e-5, noise_multiplier=1.0, progress=False)


def test_compare_techniques_tunes_on_validation_and_tests_the_chosen_model_once() -> None:
    g = torch.Generator().manual_seed(0)
    make = lambda n: TensorDataset(torch.rand(n, 3, 8, 8, generator=g), torch.arange(n) % 3)  # noqa: E731
    train_set, val, test = make(64), make(30), make(20)

    def model_fn(ws: bool) -> nn.Module:
        m = small_cnn()
        return scale.standardize_weights(m) if ws else m

    variants = scale.technique_variants(2, equal_compute=True)
    search, chosen = scale.compare_techniques(
        model_fn, train_set, val, test, variants=variants, learning_rates=[0.05, 0.5], steps=4, ema_decay=0.9,
        progress=False, batch_size=16, max_grad_norm=1.0, delta=1e-5, target_epsilon=4.0, seed=0)
    assert len(search) == len(variants) * 2 and list(chosen["variant"]) == [v["name"] for v in variants]
    for row in chosen.itertuples():  # the chosen learning rate has the best validation accuracy
        scores = search[search["variant"] == row.variant].set_index("lr")["validation_accuracy"]
        assert row.validation_accuracy == scores.max() and scores[row.lr] == scores.max()
    by = chosen.set_index("variant")
    assert by.loc["plain DP-SGD", "steps"] == by.loc["K = 2", "steps"] == 4
    assert by.loc["plain DP-SGD, 2x steps", "steps"] == 8  # the gradient work of two views
    # every variant ends at the same epsilon; twice the steps at that epsilon need more noise
    assert (chosen["epsilon_prv"] <= 4.0 + 1e-9).all() and (chosen["epsilon_prv"] > 3.9).all()
    assert by.loc["plain DP-SGD, 2x steps", "noise_multiplier"] > by.loc["plain DP-SGD", "noise_multiplier"]
    assert by.loc["EMA", "noise_multiplier"] == by.loc["plain DP-SGD", "noise_multiplier"]
    assert chosen["test_accuracy"].between(0, 1).all()
