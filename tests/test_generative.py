"""DP generative models: metrics, the DP-GAN discriminator step, GS-WGAN's sanitiser and accounting."""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from dpnb import gan, gswgan, metrics, privacy
from dpnb.features import WeightsUnavailable
from dpnb.params import ParameterError
from dpnb.train import load_checkpoint, save_checkpoint

needs_data = pytest.mark.skipif(not os.environ.get("DPNB_DATA"), reason="needs the real data (DPNB_DATA)")


# ---------------------------------------------------------------- metrics

def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3000, 16)) @ rng.normal(size=(16, 16))
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    fids = [metrics.frechet_distance(a, a + s * rng.normal(size=a.shape)) for s in (0.1, 0.5, 1.0, 2.0)]
    assert all(x < y for x, y in zip(fids, fids[1:])), fids
    # two samples of the same distribution: small, against a shifted one: large
    b = rng.normal(size=(3000, 16)) @ np.eye(16)
    assert metrics.frechet_distance(rng.normal(size=(3000, 16)), b) < 0.2
    assert metrics.frechet_distance(b + 1.0, b) == pytest.approx(16.0, rel=0.05)


def test_inception_score_bounds() -> None:
    confident = np.eye(10)[np.arange(1000) % 10] * 0.999 + 0.0001
    assert metrics.inception_score(confident) == pytest.approx(10.0, rel=0.02)
    one_class = np.tile(np.eye(10)[0], (100, 1))
    assert metrics.inception_score(one_class) == pytest.approx(1.0, rel=1e-3)
    with pytest.raises(ParameterError, match="splits"):
        metrics.inception_score(one_class, splits=0)


def test_inception_weights_missing_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*a: object, **k: object) -> None:
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailable) as e:
        metrics.inception_extractor()
    msg = str(e.value)
    assert "\n" not in msg and "pt_inception" in msg and "fid_features='classifier'" in msg


@pytest.fixture(scope="module")
def mnist01() -> tuple[TensorDataset, TensorDataset]:
    from dpnb import data

    return (data.mnist_tensors(split="train", normalize=False, limit=6000, seed=0),
            data.mnist_tensors(split="test", normalize=False, limit=2000, seed=0))


@needs_data
def test_judge_scores_real_images_as_real(mnist01: tuple[TensorDataset, TensorDataset], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPNB_CACHE", str(tmp_path))
    train, test = mnist01
    judge = metrics.train_judge(train, test, fid_features="classifier", epochs=4)
    assert judge.fid_name.startswith("classifier FID") and judge.test_accuracy > 0.95
    assert judge.metric_name("fid") == judge.fid_name and judge.metric_name("rf") == "downstream accuracy (rf)"
    real = judge.score(test.tensors[0])  # the real test images against themselves (the reference)
    noisy = judge.score((test.tensors[0] + 0.5 * torch.randn(2000, 1, 28, 28)).clamp(0, 1))
    assert real["fid"] < 1e-6
    assert real["inception_score"] > 8.0  # near the number of classes (10); 8.35 with this small judge
    assert noisy["fid"] > 1.0 and noisy["inception_score"] < real["inception_score"]
    # cached: a second call loads the same weights instead of training again
    again = metrics.train_judge(train, test, fid_features="classifier", epochs=4)
    assert again.test_accuracy == judge.test_accuracy and list(tmp_path.glob("judge-*.pt"))


@needs_data
def test_downstream_harness_reproduces_real_data_accuracy(mnist01: tuple[TensorDataset, TensorDataset]) -> None:
    from sklearn.linear_model import LogisticRegression

    full, test = mnist01
    train = TensorDataset(*(t[:2000] for t in full.tensors))
    acc = metrics.downstream_accuracy(train, test, models=("logistic regression", "CNN"), cnn_epochs=3)
    x, y = train.tensors
    direct = LogisticRegression(max_iter=200).fit(x.flatten(1).numpy(), y.numpy()).score(
        test.tensors[0].flatten(1).numpy(), test.tensors[1].numpy())
    assert acc["logistic regression"] == pytest.approx(direct, abs=1e-9)
    assert acc["logistic regression"] > 0.8 and acc["CNN"] > 0.8
    shuffled = TensorDataset(x, y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))])
    assert metrics.downstream_accuracy(shuffled, test, models=("logistic regression",))["logistic regression"] < 0.3



def test_downstream_validation_score_is_the_same_cnn_on_held_out_images() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 3
    x = (torch.rand(300, 1, 28, 28, generator=g) * 0.2 + (y.float() / 3)[:, None, None, None]).clamp(0, 1)
    train, test = TensorDataset(x[:200], y[:200]), TensorDataset(x[200:], y[200:])
    both = metrics.downstream_accuracy(train, test, models=("CNN",), cnn_epochs=1, validation=test)
    assert both["CNN (validation)"] == both["CNN"]  # one CNN, scored twice on the same images
    only = metrics.downstream_accuracy(train, test, models=("logistic regression",), cnn_epochs=1, validation=test)
    assert set(only) == {"logistic regression", "CNN (validation)"}  # the CNN is fitted for validation alone
    assert only["CNN (validation)"] == both["CNN"]  # and it is the same seeded CNN


# ---------------------------------------------------------------- DP-GAN

def _pairs(n: int = 6) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return (torch.rand(n, 1, 28, 28, generator=g), torch.arange(n) % 10, torch.rand(n, 1, 28, 28, generator=g),
            torch.rand(n, 1, 1, 1, generator=g))


@pytest.mark.parametrize("loss", gan.LOSSES)
def test_per_pair_gradients_match_autograd_one_pair_at_a_time(loss: str) -> None:
    torch.manual_seed(0)
    D = gan.Discriminator(width=4)
    x, y, fake, t = _pairs()
    grads = gan.per_example_gradients(D, x, y, fake, t, loss=loss)
    for i in range(len(y)):
        D.zero_grad()
        params = dict(D.named_parameters())
        if loss == "wgan-gp":  # the reference: the penalty with plain autograd (create_graph)
            xh = (t[i] * x[i] + (1 - t[i]) * fake[i]).unsqueeze(0).requires_grad_(True)
            (gx,) = torch.autograd.grad(D(xh, y[i:i + 1]).sum(), xh, create_graph=True)
            d_r, d_f = D(x[i:i + 1], y[i:i + 1])[0], D(fake[i:i + 1], y[i:i + 1])[0]
            ref = d_f - d_r + 10 * (gx.flatten().norm() - 1) ** 2 + 1e-3 * d_r ** 2
        else:
            ref = gan.pair_loss(D, params, x[i], y[i], fake[i], t[i], loss=loss)
        ref.backward()
        for k, p in D.named_parameters():
            torch.testing.assert_close(grads[k][i], p.grad, rtol=1e-4, atol=1e-5)


def test_clip_and_noise_bounds_each_pair_and_adds_the_right_noise() -> None:
    torch.manual_seed(0)
    D = gan.Discriminator(width=4)
    x, y, fake, t = _pairs()
    grads = gan.per_example_gradients(D, x, y, fake, t, loss="wgan-gp")
    C = 1e-3  # far below the raw norms: every pair is clipped
    clipped, norms = gan.clip_and_noise(grads, max_grad_norm=C, noise_multiplier=0.0, expected_batch_size=1.0)
    assert (norms > C).all()
    total = torch.sqrt(sum((v ** 2).sum() for v in clipped.values()))
    assert total <= len(y) * C * (1 + 1e-5)
    # removing one pair moves the sum by at most C: the sensitivity the accountant assumes
    without = {k: v[1:] for k, v in grads.items()}
    c2, _ = gan.clip_and_noise(without, max_grad_norm=C, noise_multiplier=0.0, expected_batch_size=1.0)
    diff = torch.sqrt(sum(((clipped[k] - c2[k]) ** 2).sum() for k in grads))
    assert diff == pytest.approx(C, rel=1e-4)
    # noise: std sigma * C per coordinate, divided by the expected batch size
    zero = {"w": torch.zeros(0, 200_000)}
    noisy, _ = gan.clip_and_noise(zero, max_grad_norm=0.5, noise_multiplier=2.0, expected_batch_size=4.0,
                                  generator=torch.Generator().manual_seed(1))
    assert noisy["w"].std().item() == pytest.approx(2.0 * 0.5 / 4.0, rel=0.01)


@needs_data
def test_dp_gan_trains_accounts_and_saves_with_weights_only(mnist01: tuple[TensorDataset, TensorDataset],
                                                             tmp_path: Path) -> None:
    train, _ = mnist01
    cfg = gan.GANConfig(loss="wgan-gp", steps=6, batch_size=32, dp=True, target_epsilon=10.0, width=8, log_every=3)
    res = gan.train_gan(train, cfg, progress=False)
    q = 1 / math.ceil(len(train.tensors[1]) / 32)  # the core's rate (dpnb.dpsgd.poisson_rate)
    assert res.sample_rate == pytest.approx(q) and res.steps == 6
    assert res.epsilon["prv"] == pytest.approx(
        privacy.prv_epsilon(noise_multiplier=res.noise_multiplier, sample_rate=q, steps=6, delta=1e-5))
    assert res.epsilon["prv"] <= 10.0 + 0.05
    s = gan.sample(res.generator, n=50)
    assert s.tensors[0].shape == (50, 1, 28, 28) and s.tensors[1].tolist()[:11] == [*range(10), 0]
    path = save_checkpoint(res.generator, tmp_path / "G.pt")
    G2 = load_checkpoint(gan.Generator(z_dim=cfg.z_dim, width=8), path)
    torch.testing.assert_close(gan.sample(G2, n=50).tensors[0], s.tensors[0])


def test_gan_config_rejects_bad_values() -> None:
    with pytest.raises(ParameterError, match="loss must be one of"):
        gan.GANConfig(loss="hinge", noise_multiplier=1.0).validated(1000)
    with pytest.raises(ParameterError, match="exactly one of"):
        gan.GANConfig().validated(1000)


# ---------------------------------------------------------------- GS-WGAN

def test_sanitize_bounds_and_noises_each_sample_gradient() -> None:
    x = torch.zeros(4, 1, 28, 28, requires_grad=True)
    w = torch.randn(1, 1, 28, 28) * 10
    (gswgan.sanitize(x, max_grad_norm=1.0, noise_multiplier=0.0) * w).sum().backward()
    norms = x.grad.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(4))  # each sample's gradient (norm ~280) clipped to C = 1
    torch.testing.assert_close(x.grad[0], (w / w.norm())[0])  # direction kept
    small = torch.zeros(2, 3, requires_grad=True)
    (gswgan.sanitize(small, max_grad_norm=5.0, noise_multiplier=0.0) * 0.1).sum().backward()
    torch.testing.assert_close(small.grad, torch.full((2, 3), 0.1))  # below C: unchanged
    big = torch.zeros(8, 10_000, requires_grad=True)
    gswgan.sanitize(big, max_grad_norm=0.5, noise_multiplier=3.0,
                    generator=torch.Generator().manual_seed(0)).sum().backward()
    clipped_mean = 0.5 / math.sqrt(10_000)  # each row's all-ones gradient clipped to 0.5
    assert big.grad.mean().item() == pytest.approx(clipped_mean, abs=0.05)
    assert big.grad.std().item() == pytest.approx(2 * 0.5 * 3.0, rel=0.01)  # noise std 2 C sigma


def test_gswgan_accounting_reproduces_the_paper_defaults() -> None:
    eps = gswgan.epsilon(noise_multiplier=1.07, num_discriminators=1000, batch_size=32, iterations=20_000,
                         delta=1e-5)
    assert eps["wbk"] == pytest.approx(10.0, rel=0.05)  # the paper reports epsilon = 10
    assert eps["rdp_poisson"] == pytest.approx(4.45, abs=0.01)  # Opacus's RDP accountant, Poisson add/remove
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(1.07, 1 / 1000, 640_000)]
    assert eps["rdp_poisson"] == pytest.approx(acc.get_epsilon(delta=1e-5), rel=1e-6)
    sigma = gswgan.calibrate_noise_multiplier(target_epsilon=10.0, num_discriminators=1000, batch_size=32,
                                              iterations=20_000, delta=1e-5)
    assert sigma == pytest.approx(1.07, rel=0.01)
    row = gswgan.accounting_row(setting="paper", num_discriminators=1000, noise_multiplier=1.07, batch_size=32,
                                iterations=20_000, delta=1e-5)
    assert (row["epsilon_wbk_replace_one"], row["epsilon_poisson_add_remove"]) == (eps["wbk"], eps["rdp_poisson"])
    assert row["compositions"] == 640_000 and row["epsilon_one_discriminator_per_batch"] > 1000 * eps["wbk"]


def test_wbk_bound_is_above_the_poisson_analysis_and_tends_to_the_gaussian() -> None:
    orders = list(range(2, 40))
    for q in (1e-3, 1e-2, 0.1):
        wbk = privacy.wbk_subsampled_gaussian_rdp(noise_multiplier=1.5, sample_rate=q, orders=orders)
        poisson = privacy.sgm_rdp(noise_multiplier=1.5, sample_rate=q, orders=[float(a) for a in orders])
        assert (wbk >= poisson - 1e-12).all()
    # a smaller sampling ratio never costs more
    a = privacy.wbk_subsampled_gaussian_rdp(noise_multiplier=1.0, sample_rate=0.01, orders=orders)
    b = privacy.wbk_subsampled_gaussian_rdp(noise_multiplier=1.0, sample_rate=0.02, orders=orders)
    assert (a <= b).all()


def _tiny_gswgan(train: TensorDataset, iterations: int) -> tuple[gswgan.GSWGANConfig, Any]:
    """A 4-discriminator GS-WGAN config and its warm start, small enough for a test."""
    cfg = gswgan.GSWGANConfig(num_discriminators=4, pretrain_steps=2, iterations=iterations, critic_iters=1,
                              batch_size=8, noise_multiplier=1.0, width=8, log_every=1)
    return cfg, gswgan.pretrain_discriminators(train, cfg, progress=False)


@needs_data
def test_gswgan_shards_are_disjoint_and_training_runs(mnist01: tuple[TensorDataset, TensorDataset]) -> None:
    train, _ = mnist01
    cfg, warm = _tiny_gswgan(train, iterations=3)
    shards = torch.cat(warm[1])
    assert len(shards) == len(set(shards.tolist())) == len(train.tensors[1])
    res = gswgan.train_gswgan(train, cfg, warm_start=warm, progress=False)
    assert len(res.history) == 3 and res.epsilon["wbk"] > res.epsilon["rdp_poisson"]
    with pytest.raises(ParameterError, match="num_discriminators"):
        gswgan.train_gswgan(train, gswgan.GSWGANConfig(num_discriminators=5, noise_multiplier=1.0), warm_start=warm)


@needs_data
def test_gswgan_logs_the_gradient_norms_the_sanitiser_clips(mnist01: tuple[TensorDataset, TensorDataset]) -> None:
    train, _ = mnist01
    cfg, warm = _tiny_gswgan(train, iterations=2)
    fractions = {}
    for C in (1e-6, 1e6):
        h = gswgan.train_gswgan(train, gswgan.GSWGANConfig(**(vars(cfg) | dict(max_grad_norm=C))),
                                warm_start=copy.deepcopy(warm), progress=False).history
        assert (h["grad_norm_median"] > 0).all()
        fractions[C] = h["clipped_fraction"].tolist()
    assert fractions == {1e-6: [1.0, 1.0], 1e6: [0.0, 0.0]}


@needs_data
def test_gswgan_warm_start_uses_pretrain_lr(mnist01: tuple[TensorDataset, TensorDataset]) -> None:
    train, _ = mnist01
    base = dict(num_discriminators=2, pretrain_steps=3, critic_iters=1, batch_size=8, width=8)
    moved = {}
    for lr in (1e-12, 1e-2):
        D = gswgan.pretrain_discriminators(train, gswgan.GSWGANConfig(**base, pretrain_lr=lr), progress=False)[0][0]
        torch.manual_seed(0)  # pretrain_discriminators seeds discriminator k with seed * 100_003 + k
        D0 = gan.Discriminator(num_classes=int(train.tensors[1].max()) + 1, width=8)
        moved[lr] = max(float((p - p0).detach().abs().max()) for p, p0 in zip(D.parameters(), D0.parameters()))
    assert moved[1e-12] < 1e-8 < 1e-4 < moved[1e-2]
    with pytest.raises(ParameterError, match="pretrain_lr"):
        gswgan.GSWGANConfig(**base, pretrain_lr=0.0).validated(len(train.tensors[1]))


def test_input_gradient_norms_match_autograd_one_image_at_a_time() -> None:
    torch.manual_seed(0)
    Ds = [gan.Discriminator(width=4) for _ in range(2)]
    x, y = torch.rand(3, 1, 28, 28), torch.tensor([0, 5, 9])
    norms = gswgan.input_gradient_norms(Ds, x, y)
    assert norms.shape == (2, 3)
    for k, D in enumerate(Ds):
        for i in range(3):
            xi = x[i:i + 1].clone().requires_grad_(True)
            (g,) = torch.autograd.grad(D(xi, y[i:i + 1]).sum(), xi)
            assert torch.allclose(norms[k, i], g.norm(), rtol=1e-5)


@needs_data
def test_warm_start_gradient_norms_probe_the_first_shards(mnist01: tuple[TensorDataset, TensorDataset]) -> None:
    train, test = mnist01
    cfg = gswgan.GSWGANConfig(num_discriminators=4, pretrain_steps=2, critic_iters=1, batch_size=8, width=8)
    x, y = test.tensors[0][:16], test.tensors[1][:16]
    table = gswgan.warm_start_gradient_norms(train, cfg, learning_rates=[1e-3], x=x, y=y, discriminators=2)
    shard = len(train.tensors[1]) // 4
    first = TensorDataset(*(t[: 2 * shard] for t in train.tensors))
    by_hand = gswgan.pretrain_discriminators(
        first, gswgan.GSWGANConfig(**(vars(cfg) | dict(num_discriminators=2, pretrain_lr=1e-3))), progress=False)[0]
    assert table.to_dict("records") == [dict(pretrain_lr=1e-3, pretrain_steps=2, discriminators=2,
                                             median_gradient_norm=float(
                                                 gswgan.input_gradient_norms(by_hand, x, y).median()),
                                             clip_bound=1.0)]
    with pytest.raises(ParameterError, match="discriminators"):
        gswgan.warm_start_gradient_norms(train, cfg, learning_rates=[1e-3], x=x, y=y, discriminators=5)


def test_gswgan_conversions_change_one_thing_at_a_time() -> None:
    t = gswgan.conversions(noise_multiplier=1.07, num_discriminators=1000, batch_size=32, iterations=20_000,
                           delta=1e-5)["epsilon"]
    sh, po = "shards without replacement, replace-one", "Poisson sampling, add/remove"
    for analysis in (sh, po):  # Balle et al.'s conversion is never looser than Mironov's on the same curve
        assert t[(analysis, "balle")] <= t[(analysis, "mironov")]
    for conv in ("mironov", "balle"):  # the Poisson add/remove analysis is the smaller, under either conversion
        assert t[(po, conv)] < t[(sh, conv)]
    # the paper's number, and the Poisson one as the budget chapter's accountant computes it
    assert t[(sh, "mironov")] == pytest.approx(gswgan.epsilon(noise_multiplier=1.07, num_discriminators=1000,
                                                              batch_size=32, iterations=20_000,
                                                              delta=1e-5)["wbk"], rel=1e-9)
    assert t[(po, "balle")] == pytest.approx(4.46, abs=0.02)
