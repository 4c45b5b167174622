"""dpnb.scattering: shapes, and the coefficients against kymatio's Scattering2D."""

from __future__ import annotations

import os

import pytest
import torch

from dpnb.scattering import Scattering2D, num_coefficients


def _kymatio():
    """kymatio 0.3.0 imports scipy.special.sph_harm (removed in SciPy 1.15) for its 3-D transform.
    The 2-D transform does not use it; give the import the old name so the package loads."""
    import scipy.special

    if not hasattr(scipy.special, "sph_harm"):
        scipy.special.sph_harm = lambda m, n, theta, phi: scipy.special.sph_harm_y(n, m, phi, theta)
    kymatio_torch = pytest.importorskip("kymatio.torch")
    return kymatio_torch.Scattering2D


@pytest.mark.parametrize("J,shape,K", [(2, (32, 32), 81), (3, (32, 32), 217), (2, (28, 28), 81), (3, (64, 48), 217)])
def test_shape(J: int, shape: tuple[int, int], K: int) -> None:
    s = Scattering2D(J=J, shape=shape)
    out = s(torch.rand(2, 3, *shape))
    assert num_coefficients(J=J, L=8) == K == s.num_coefficients
    assert out.shape == (2, 3, K, shape[0] // 2 ** J, shape[1] // 2 ** J)


def _images(n: int) -> torch.Tensor:
    """Real CIFAR-10 test images when DPNB_DATA is set, else seeded random images."""
    if os.environ.get("DPNB_DATA"):
        from torchvision import transforms

        from dpnb.data import load_dataset

        ds = load_dataset("cifar10", split="test", transform=transforms.ToTensor(), download=False)
        return torch.stack([ds[i * 997][0] for i in range(n)])
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("J,shape", [(2, (32, 32)), (3, (32, 32)), (2, (28, 28)), (3, (64, 48))])
def test_matches_kymatio(J: int, shape: tuple[int, int]) -> None:
    Kymatio = _kymatio()
    x = _images(4)
    if x.shape[-2:] != shape:
        x = torch.nn.functional.interpolate(x, size=shape, mode="bilinear", align_corners=False)
    ours, theirs = Scattering2D(J=J, shape=shape)(x), Kymatio(J=J, shape=shape, L=8)(x)
    assert ours.shape == theirs.shape
    # float32 filters on both sides; coefficients are O(0.1-1)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert theirs.abs().max() > 0.1


def test_chunking_does_not_change_the_result() -> None:
    x = torch.rand(10, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    a = Scattering2D(J=2, shape=(32, 32), chunk_size=1)(x)
    b = Scattering2D(J=2, shape=(32, 32), chunk_size=1000)(x)
    torch.testing.assert_close(a, b)


def test_translation_invariance_grows_with_J() -> None:
    """Scattering is locally invariant to translations at scale 2**J (Mallat 2012): a 1-pixel shift
    changes J=3 coefficients less than J=1 coefficients."""
    x = torch.zeros(1, 1, 32, 32)
    x[..., 12:20, 10:14] = 1.0
    shifted = torch.roll(x, 1, dims=-1)
    change = {}
    for J in (1, 3):
        s = Scattering2D(J=J, shape=(32, 32))
        a, b = s(x), s(shifted)
        change[J] = float((a - b).norm() / a.norm())
    assert change[3] < change[1]


def test_bad_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="divisible by 2\\*\\*J"):
        Scattering2D(J=3, shape=(30, 32))
    with pytest.raises(ValueError, match="expected images of shape"):
        Scattering2D(J=2, shape=(32, 32))(torch.rand(1, 28, 28))


def test_filters_move_with_the_module() -> None:
    s = Scattering2D(J=2, shape=(32, 32))
    names = {n for n, _ in s.named_buffers()}
    assert {"phi_0", "phi_1", "psi_0_0", "psi_1_0"} <= names
    assert s.state_dict() == {}  # non-persistent: recomputed, never loaded from a file
