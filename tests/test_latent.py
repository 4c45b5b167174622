"""Private generators in a public latent space: the one-shot releases' calibration and sensitivity,
the per-example nature of the codes, the latent GS-WGAN's sanitiser and the accounting of private data only."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.utils.data import TensorDataset

from dpnb import dpsgd, gswgan, latent, oneshot, privacy
from dpnb.params import ParameterError


def _unit_ball(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g)
    radius = torch.rand(n, 1, generator=g) ** 0.3
    z = z / z.norm(dim=1, keepdim=True) * radius
    z[:5] = z[:5] / z[:5].norm(dim=1, keepdim=True)  # some rows exactly on the sphere
    z[0] = 0.0
    z[0, 0] = 1.0  # a basis vector: its outer product's upper triangle has norm 1, the worst case of the bound
    return z


# ---------------------------------------------------------------- calibration

@pytest.mark.parametrize("epsilon,delta,sens", [(1.0, 1e-5, [1.0]), (10.0, 1e-5, [3 ** 0.5]),
                                                (0.3, 1e-6, [3 ** 0.5, 2 ** 0.5, 2 ** 0.5, 3 ** 0.5])])
def test_noise_std_is_the_smallest_that_meets_delta(epsilon: float, delta: float, sens: list[float]) -> None:
    std = oneshot.noise_std(epsilon=epsilon, delta=delta, sensitivities=sens)
    total = math.sqrt(sum(s * s for s in sens))
    # as one Gaussian mechanism of sensitivity `total` (Dong, Roth & Su 2022, Cor. 3.3): δ(ε) at σ = std / total
    assert privacy.gaussian_delta(noise_multiplier=std / total, epsilon=epsilon) <= delta
    assert privacy.gaussian_delta(noise_multiplier=0.999 * std / total, epsilon=epsilon) > delta


def test_noise_std_agrees_with_rdp_of_the_composition_up_to_the_conversion_slack() -> None:
    # An independent route: T Gaussian mechanisms composed in RDP (Mironov 2017, Prop. 7 and Cor. 2) and
    # converted to (ε, δ) can only be looser than the exact GDP composition.
    sens = [3 ** 0.5, 2 ** 0.5, 2 ** 0.5, 2 ** 0.5, 3 ** 0.5]
    std = oneshot.noise_std(epsilon=1.0, delta=1e-5, sensitivities=sens)
    rdp = sum(privacy.gaussian_rdp(noise_multiplier=std / s, orders=privacy.DEFAULT_ORDERS) for s in sens)
    eps_rdp = privacy.rdp_to_epsilon(rdp=rdp, orders=privacy.DEFAULT_ORDERS, delta=1e-5)[0]
    assert 1.0 <= eps_rdp < 1.6


def test_noise_std_rejects_bad_input() -> None:
    with pytest.raises(ParameterError, match="epsilon"):
        oneshot.noise_std(epsilon=0, delta=1e-5, sensitivities=[1.0])
    with pytest.raises(ParameterError, match="sensitivities"):
        oneshot.noise_std(epsilon=1, delta=1e-5, sensitivities=[])


# ---------------------------------------------------------------- sensitivity, checked numerically

def test_removing_one_example_moves_the_class_statistics_by_at_most_sqrt3() -> None:
    z = _unit_ball(300, 6)
    full = oneshot.class_statistics(z)
    moves = torch.stack([(full - oneshot.class_statistics(torch.cat([z[:i], z[i + 1:]]))).norm() for i in range(300)])
    assert float(moves.max()) <= oneshot.GAUSSIAN_SENSITIVITY + 1e-5
    assert float(moves.max()) >= oneshot.GAUSSIAN_SENSITIVITY - 1e-4  # attained by a unit-norm row: the bound is tight


def test_the_whole_release_moves_by_one_example_only_in_its_class() -> None:
    # all classes' statistics side by side: removing an example of class 1 changes class 1's block only
    z, y = _unit_ball(200, 4), torch.arange(200) % 3
    def stats(zz: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
        return torch.cat([oneshot.class_statistics(zz[yy == c]) for c in range(3)])
    keep = torch.arange(200) != 4  # example 4 is of class 1
    move = stats(z, y) - stats(z[keep], y[keep])
    assert float(move.norm()) <= oneshot.GAUSSIAN_SENSITIVITY + 1e-5
    block = len(oneshot.class_statistics(z[:2]))
    assert float(move[:block].abs().max()) == 0 and float(move[2 * block:].abs().max()) == 0


def test_mean_embedding_features_have_unit_norm_and_sensitivity_sqrt2() -> None:
    x = torch.rand(50, 1, 28, 28)
    W = oneshot.rff_frequencies(dim=784, features=200, lengthscale=5.0, generator=torch.Generator().manual_seed(0))
    phi = oneshot.rff_features(x, W)
    assert torch.allclose(phi.norm(dim=1), torch.ones(50), atol=1e-5)
    full = torch.cat([phi.sum(0), torch.tensor([50.0])])
    less = torch.cat([phi[1:].sum(0), torch.tensor([49.0])])
    assert float((full - less).norm()) == pytest.approx(oneshot.SUMS_SENSITIVITY, abs=1e-5)


def test_release_without_noise_recovers_the_class_means_and_refuses_unclipped_codes() -> None:
    z, y = _unit_ball(400, 3), torch.arange(400) % 2
    rel = oneshot.release_class_gaussians(z, y, classes=[0, 1], epsilon=None, delta=1e-5)
    assert rel.noise_std == 0
    assert torch.allclose(rel.components[1][0].mean, z[y == 1].mean(0), atol=1e-5)
    cov = torch.cov(z[y == 1].T, correction=0)
    got = rel.components[1][0].scale @ rel.components[1][0].scale.T
    assert torch.allclose(got, cov, atol=1e-4)
    with pytest.raises(ParameterError, match="norm at most 1"):
        oneshot.release_class_gaussians(z * 3, y, classes=[0, 1], epsilon=1.0, delta=1e-5)


def test_a_mixture_release_pays_for_every_lloyd_iteration() -> None:
    z, y = _unit_ball(400, 3), torch.arange(400) % 2
    rel = oneshot.release_class_gaussians(z, y, classes=[0, 1], epsilon=2.0, delta=1e-5, components=3, iterations=4,
                                          generator=torch.Generator().manual_seed(0))
    sens = [3 ** 0.5] + [2 ** 0.5] * 4 + [3 ** 0.5]
    assert rel.releases == 6
    assert rel.noise_std == pytest.approx(oneshot.noise_std(epsilon=2.0, delta=1e-5, sensitivities=sens))
    codes, labels = rel.sample(7, generator=torch.Generator().manual_seed(1))
    assert codes.shape == (14, 3) and torch.isfinite(codes).all() and labels.tolist() == [0] * 7 + [1] * 7


# ---------------------------------------------------------------- codes are per-example maps

def test_inversion_of_one_image_reads_no_other_image() -> None:
    torch.manual_seed(0)
    enc, dec = latent.mlp_autoencoder(latent_dim=6, hidden=16)
    x = torch.rand(6, 1, 28, 28)
    init = latent.encode(enc, x)
    z = latent.invert(dec, x, steps=25, lr=0.05, init=init, batch_size=4)
    other = x.clone()
    other[1:] = torch.rand(5, 1, 28, 28)  # every other image replaced
    init_other = init.clone()
    init_other[1:] = latent.encode(enc, other[1:])
    z_other = latent.invert(dec, other, steps=25, lr=0.05, init=init_other, batch_size=6)  # other batching too
    assert torch.allclose(z[0], z_other[0], atol=1e-6)
    alone = latent.invert(dec, x[:1], steps=25, lr=0.05, init=init[:1])
    assert torch.allclose(z[0], alone[0], atol=1e-6)
    with torch.no_grad():
        assert float(((dec(z) - x) ** 2).mean()) < float(((dec(init) - x) ** 2).mean())  # and it lowers the error


def test_code_scale_is_fitted_on_public_codes_and_clips_private_ones() -> None:
    public = torch.randn(1000, 5)
    scale = latent.CodeScale.fit(public, quantile=0.9)
    private = 4 * torch.randn(300, 5)
    u = scale.apply(private)
    assert float(u.norm(dim=1).max()) <= 1 + 1e-6
    inside = scale.apply(public)
    assert float((inside.norm(dim=1) < 1 - 1e-6).float().mean()) == pytest.approx(0.9, abs=0.01)
    assert torch.allclose(scale.invert(scale.apply(public[:3] * 0.1)), public[:3] * 0.1, atol=1e-5)


def test_csc2412_split_is_disjoint_odd_public_even_private() -> None:
    labels = torch.arange(1000) % 10
    s = latent.csc2412_split(labels, labelling=300, seed=42)
    allidx = torch.cat(list(s.values()))
    assert len(allidx) == 1000 and len(allidx.unique()) == 1000
    assert (labels[s["public"]] % 2 == 1).all() and (labels[s["private"]] % 2 == 0).all()
    assert len(s["labelling"]) == 300


# ---------------------------------------------------------------- GS-WGAN in the latent space

def test_latent_sanitiser_bounds_each_code_gradient() -> None:
    codes = torch.randn(5, 16, requires_grad=True)
    weights = torch.randn(5, 16) * 50
    (gswgan.sanitize(codes, max_grad_norm=0.7, noise_multiplier=0.0) * weights).sum().backward()
    assert torch.allclose(codes.grad.norm(dim=1), torch.full((5,), 0.7), atol=1e-5)


def test_latent_gswgan_trains_on_codes_and_accounts_its_shards() -> None:
    u = latent.CodeScale.fit(torch.randn(200, 8)).apply(torch.randn(120, 8))
    y = torch.arange(120) % 3
    cfg = gswgan.GSWGANConfig(num_discriminators=4, pretrain_steps=2, iterations=3, critic_iters=1, batch_size=8,
                              target_epsilon=10.0, latent_dim=8, width=16, z_dim=4, num_classes=3, log_every=1)
    res = gswgan.train_gswgan(TensorDataset(u, y), cfg, progress=False)
    out = res.generator(torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2]))
    assert out.shape == (6, 8)
    assert res.epsilon["wbk"] <= 10.0 + 1e-6
    assert (res.history["clipped_fraction"] <= 1).all()


# ---------------------------------------------------------------- the DP-VAE: private data only in the accounting

def test_dp_vae_accounts_for_the_private_codes_only() -> None:
    u = latent.CodeScale.fit(torch.randn(500, 6)).apply(torch.randn(300, 6))  # 500 public codes, 300 private
    y = torch.arange(300) % 2
    res = latent.train_dp_vae(u, y, num_classes=2, epochs=2, batch_size=50, target_epsilon=5.0, delta=1e-5,
                              progress=False)
    q, per_epoch = dpsgd.poisson_rate(dataset_size=300, batch_size=50)
    assert res.steps == 2 * per_epoch
    expected = privacy.epsilon(privacy.SampledGaussianEvent(res.noise_multiplier, q, res.steps), delta=1e-5,
                               accountant="prv")
    assert res.epsilon == pytest.approx(expected)
    assert res.epsilon <= 5.0 + 0.05
    sample = res.model.sample(torch.tensor([0, 1, 1]))
    assert sample.shape == (3, 6) and torch.isfinite(sample).all()


def test_dp_vae_clips_each_example_gradient() -> None:
    # the per-example gradients it clips are those of autograd, one example at a time
    from torch.func import functional_call, grad, vmap

    torch.manual_seed(0)
    model = latent.ConditionalVAE(dim=4, num_classes=2, hidden=8, latent=2)
    u, y, e = torch.randn(5, 4), torch.tensor([0, 1, 0, 1, 1]), torch.randn(5, 2)
    params = {k: v.detach() for k, v in model.named_parameters()}
    per = vmap(grad(lambda p, ui, yi, ei: functional_call(model, p, (ui[None], yi[None], ei[None]))[0]),
               in_dims=(None, 0, 0, 0))(params, u, y, e)
    for i, (k, p) in itertools.product(range(5), model.named_parameters()):
        model.zero_grad()
        model.loss(u[i:i + 1], y[i:i + 1], e[i:i + 1]).sum().backward()
        assert torch.allclose(per[k][i], p.grad, atol=1e-5)


def test_dp_gan_runs_on_codes_with_the_latent_networks() -> None:
    from dpnb import gan

    u = latent.CodeScale.fit(torch.randn(200, 8)).apply(torch.randn(300, 8))
    y = torch.arange(300) % 3
    cfg = gan.GANConfig(loss="wgan-gp", steps=3, batch_size=30, target_epsilon=10.0, latent_dim=8, width=16, z_dim=4,
                        num_classes=3, log_every=1)
    res = gan.train_gan(TensorDataset(u, y), cfg, progress=False)
    codes = gan.sample(res.generator, n=6, num_classes=3).tensors[0]
    assert codes.shape == (6, 8) and torch.isfinite(codes).all()
    assert res.epsilon["prv"] <= 10.0 + 0.1


# ---------------------------------------------------------------- the ten-class pipeline's pieces

def test_dp_merf_releases_once_at_the_calibrated_noise_and_fits_the_release() -> None:
    from dpnb.gan import LatentGenerator

    g = torch.Generator().manual_seed(0)
    y = torch.arange(600) % 2
    x = torch.randn(600, 3, generator=g) * 0.3 + torch.stack([y.float() * 2 - 1] * 3, 1)  # two separated blobs
    kw = dict(classes=[0, 1, 2], features=200, lengthscale=1.0, delta=1e-5, z_dim=4, seed=3, progress=False)
    r = oneshot.train_dp_merf(x, y, generator_net=LatentGenerator(z_dim=4, num_classes=3, width=32, out_dim=3),
                              epsilon=2.0, steps=150, lr=1e-2, **kw)
    assert r.embedding.noise_std == oneshot.noise_std(epsilon=2.0, delta=1e-5, sensitivities=[math.sqrt(2)])
    assert r.embedding.means.shape == (3, 200)  # class 2 is public metadata: released although absent
    assert float(r.embedding.counts[2]) >= 1.0  # its noisy count is floored, never a division by zero
    assert sum(r.losses[-10:]) < sum(r.losses[:10])  # the generator moves towards the release
    # the same seed gives the same frequencies and noise: a run is reproducible from its seed
    again = oneshot.train_dp_merf(x, y, generator_net=LatentGenerator(z_dim=4, num_classes=3, width=32, out_dim=3),
                                  epsilon=2.0, steps=1, **kw)
    assert torch.equal(again.embedding.means, r.embedding.means)
    # without noise the fitted generator's class means approach the blobs' centres (a non-private check)
    clean = oneshot.train_dp_merf(x, y, generator_net=LatentGenerator(z_dim=4, num_classes=3, width=32, out_dim=3),
                                  epsilon=None, steps=400, lr=1e-2, **kw)
    with torch.no_grad():
        out = clean.generator(torch.randn(400, 4), torch.arange(400) % 2)
    for c, centre in ((0, -1.0), (1, 1.0)):
        assert abs(float(out[torch.arange(400) % 2 == c].mean()) - centre) < 0.3


def test_one_shot_samples_are_fixed_by_their_seed_and_decoded_through_public_weights_only() -> None:
    u = _unit_ball(400, 6)
    y = torch.arange(400) % 4
    a = latent.one_shot_samples(u, y, classes=[0, 1, 2, 3], epsilon=1.0, delta=1e-5, per_class=7, seed=5)
    b = latent.one_shot_samples(u, y, classes=[0, 1, 2, 3], epsilon=1.0, delta=1e-5, per_class=7, seed=5)
    c = latent.one_shot_samples(u, y, classes=[0, 1, 2, 3], epsilon=1.0, delta=1e-5, per_class=7, seed=6)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])
    assert a[1].tolist() == [k for k in range(4) for _ in range(7)] and a[2].epsilon == 1.0
    enc, dec = latent.mlp_autoencoder(latent_dim=6, hidden=8)
    scale = latent.CodeScale.fit(torch.randn(100, 6) * 2 + 1)
    images = latent.PublicDecoder(dec, scale)(a[0])
    assert images.shape == (28, 1, 28, 28)
    assert torch.allclose(images, latent.decode(dec, a[0] * scale.radius + scale.center))
