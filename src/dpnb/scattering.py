"""The 2-D wavelet scattering transform (orders 0, 1, 2) that Tramèr & Boneh use as DP features.

A scattering network is a CNN whose filters are fixed Morlet wavelets, not learned
(Mallat 2012, "Group invariant scattering"; Bruna & Mallat 2013, "Invariant scattering
convolution networks"). With ``J`` scales and ``L`` angles an image channel becomes

* order 0: ``x * phi_J``,
* order 1: ``|x * psi_{j1,t1}| * phi_J`` for all ``J*L`` wavelets,
* order 2: ``||x * psi_{j1,t1}| * psi_{j2,t2}| * phi_J`` for ``j2 > j1``,

each subsampled by ``2**J``: ``1 + J*L + L**2 * J*(J-1)/2`` maps (81 for J=2, L=8).
Because nothing is learned, the features cost no privacy budget; Tramèr & Boneh (ICLR 2021,
"Differentially private learning needs better features", Sec. 3) train linear models and
small CNNs on them with DP-SGD.

The filters, padding and Fourier-domain subsampling follow kymatio 0.3 (Andreux et al.,
JMLR 2020), so the coefficients equal ``kymatio.torch.Scattering2D``'s to float32 precision
(checked in ``tests/test_scattering.py``); this version is vectorised over angles and
needs nothing beyond torch and numpy (kymatio 0.3.0 no longer imports with SciPy >= 1.15).

Example::

    >>> import torch
    >>> S = Scattering2D(J=2, shape=(32, 32))
    >>> S(torch.rand(4, 3, 32, 32)).shape
    torch.Size([4, 3, 81, 8, 8])
    >>> num_coefficients(J=2, L=8), num_coefficients(J=3, L=8)
    (81, 217)
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def num_coefficients(*, J: int, L: int = 8) -> int:
    """Scattering maps per input channel: ``1 + J*L + L**2 * J*(J-1)/2`` (Bruna & Mallat 2013, Sec. 3)."""
    return 1 + J * L + L * L * J * (J - 1) // 2


def gabor_2d(M: int, N: int, *, sigma: float, theta: float, xi: float, slant: float = 1.0) -> np.ndarray:
    """Periodised Gabor filter ``g_sigma(u) exp(i xi . u)`` on an ``M x N`` grid (space domain).

    The Gaussian envelope is elongated by ``1/slant`` across the direction ``theta``; the sum over
    25 neighbouring periods makes it periodic, as the FFT convolution assumes.
    """
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    curv = rot @ np.diag([1.0, slant * slant]) @ rot.T / (2 * sigma * sigma)
    out = np.zeros((M, N), np.complex128)
    for ex in range(-2, 3):
        for ey in range(-2, 3):
            xx, yy = np.mgrid[ex * M:(ex + 1) * M, ey * N:(ey + 1) * N]
            quad = curv[0, 0] * xx * xx + (curv[0, 1] + curv[1, 0]) * xx * yy + curv[1, 1] * yy * yy
            out += np.exp(-quad + 1j * xi * (xx * c + yy * s))
    return out / (2 * math.pi * sigma * sigma / slant)


def morlet_2d(M: int, N: int, *, sigma: float, theta: float, xi: float, slant: float = 0.5) -> np.ndarray:
    """Morlet wavelet: a Gabor filter minus a multiple of its envelope, so that it has zero mean."""
    wave = gabor_2d(M, N, sigma=sigma, theta=theta, xi=xi, slant=slant)
    envelope = gabor_2d(M, N, sigma=sigma, theta=theta, xi=0.0, slant=slant)
    return wave - wave.sum() / envelope.sum() * envelope


def periodize(filter_hat: np.ndarray, res: int) -> np.ndarray:
    """Fourier filter for a signal subsampled ``2**res`` times: drop the band it cannot hold, fold the rest."""
    M, N = filter_hat.shape
    k = 2 ** res
    f = filter_hat.copy()
    if res > 0:
        f[M // (2 * k):M // (2 * k) + int(M * (1 - 1 / k)), :] = 0
        f[:, N // (2 * k):N // (2 * k) + int(N * (1 - 1 / k))] = 0
    return f.reshape(k, M // k, k, N // k).sum(axis=(0, 2))


def _float32(f: np.ndarray) -> torch.Tensor:
    """Filter as float32 with negligible entries set to 0 (denormal floats make CPU products ~30x slower)."""
    f = np.where(np.abs(f) < 1e-20, 0.0, f)
    return torch.from_numpy(f).float()


def _lowpass_operators(phi_hat: np.ndarray, *, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Real matrices ``rows (h/k - 2, h)`` and ``cols (w/k - 2, w)`` such that ``rows @ u @ cols.T`` is
    ``ifft2(alias_k(fft2(u) * phi_hat)).real`` cut by one pixel on each side, for real ``u (h, w)``.

    The low-pass filter is a periodised isotropic Gaussian, whose Fourier transform is an outer
    product; the factors come from its SVD (checked to be rank one)."""
    h, w = phi_hat.shape
    U, s, Vt = np.linalg.svd(phi_hat)
    if s[1] > 1e-9 * s[0]:
        raise ValueError("the low-pass filter is not separable")
    factors = []
    for n, a in ((h, U[:, 0] * s[0]), (w, Vt[0])):
        basis = np.fft.fft(np.eye(n), axis=0) * a[:, None]              # column m: fft(e_m) * a
        aliased = basis.reshape(k, n // k, n).mean(axis=0)              # subsampling by k in space
        op = np.fft.ifft(aliased, axis=0)[1:-1]                         # (n/k - 2, n)
        factors.append(op)
    rows, cols = factors
    # The product of the two factors is real; each alone may carry opposite imaginary parts only
    # if the factors are not even functions, which a centred Gaussian is.
    if max(np.abs(rows.imag).max(), np.abs(cols.imag).max()) > 1e-9 * max(np.abs(rows).max(), 1e-30):
        raise ValueError("the low-pass operator is not real")
    return torch.from_numpy(rows.real.copy()).float(), torch.from_numpy(cols.real.copy()).float()


def padded_size(n: int, J: int) -> int:
    """Size after padding: a multiple of ``2**J`` with at least ``2**(J-1)`` extra pixels on each side."""
    return ((n + 2 ** J) // 2 ** J + 1) * 2 ** J


class Scattering2D(nn.Module):
    """Scattering transform of images ``(..., M, N)`` into ``(..., K, M / 2**J, N / 2**J)``.

    ``K = num_coefficients(J=J, L=L)``; coefficient order is kymatio's: order 0, then order 1 by
    ``(j1, theta1)``, then order 2 by ``(j1, theta1, j2, theta2)``.
    """

    def __init__(self, *, J: int, shape: tuple[int, int], L: int = 8, chunk_size: int = 24) -> None:
        super().__init__()
        self.chunk_size = chunk_size
        M, N = shape
        if J < 1 or L < 1:
            raise ValueError(f"J and L must be >= 1, got J={J}, L={L}")
        if M % 2 ** J or N % 2 ** J:
            raise ValueError(f"image shape {shape} must be divisible by 2**J = {2 ** J}")
        self.J, self.L, self.shape = J, L, (M, N)
        self.Mp, self.Np = padded_size(M, J), padded_size(N, J)
        self.pads = ((self.Mp - M) // 2, (self.Mp - M + 1) // 2, (self.Np - N) // 2, (self.Np - N + 1) // 2)
        if max(self.pads[:2]) >= M or max(self.pads[2:]) >= N:
            raise ValueError(f"image shape {shape} is too small for J={J}")
        # psi[j][res]: the L wavelets at scale j, periodised to resolution res (res <= j).
        psi: list[list[torch.Tensor]] = []
        for j in range(J):
            hats = np.stack([
                np.real(np.fft.fft2(morlet_2d(self.Mp, self.Np, sigma=0.8 * 2 ** j,
                                              theta=(int(L - L / 2 - 1) - t) * math.pi / L,
                                              xi=3.0 / 4.0 * math.pi / 2 ** j, slant=4.0 / L)))
                for t in range(L)])
            psi.append([_float32(np.stack([periodize(h, r) for h in hats]))
                        for r in range(min(j + 1, max(J - 1, 1)))])
        phi_hat = np.real(np.fft.fft2(gabor_2d(self.Mp, self.Np, sigma=0.8 * 2 ** (J - 1), theta=0.0, xi=0.0)))
        # Buffers, so that ``.to(device)`` moves the filters with the module.
        for j, levels in enumerate(psi):
            for r, f in enumerate(levels):
                self.register_buffer(f"psi_{j}_{r}", f, persistent=False)
        for r in range(J):
            self.register_buffer(f"phi_{r}", _float32(periodize(phi_hat, r)), persistent=False)
            rows, cols = _lowpass_operators(periodize(phi_hat, r), k=2 ** (J - r))
            self.register_buffer(f"lowpass_rows_{r}", rows, persistent=False)
            self.register_buffer(f"lowpass_cols_{r}", cols, persistent=False)

    def _psi(self, j: int, res: int) -> torch.Tensor:
        return getattr(self, f"psi_{j}_{res}")

    def _phi(self, res: int) -> torch.Tensor:
        return getattr(self, f"phi_{res}")

    @property
    def num_coefficients(self) -> int:
        return num_coefficients(J=self.J, L=self.L)

    @staticmethod
    def _filter(u_hat: torch.Tensor, f: torch.Tensor, k: int) -> torch.Tensor:
        """``u_hat * f`` for every filter of ``f`` (Fourier domain), then subsampling by ``k`` in space,
        which in Fourier is averaging the ``k x k`` aliases: ``(..., h, w) x (F, h, w) -> (..., F, h/k, w/k)``.

        With ``k > 1`` the product and the alias sum are one batched matrix product per output
        frequency (``(rows, k*k) @ (k*k, F)``), which never builds the ``(..., F, h, w)`` product;
        on CPU that is about twice as fast. Works on the real view: complex-by-real products are slow."""
        *lead, h, w = u_hat.shape
        n_filters = f.shape[0]
        if k == 1:
            return torch.view_as_complex((torch.view_as_real(u_hat)[..., None, :, :, :] * f[..., None]).contiguous())
        hk, wk = h // k, w // k
        rows = u_hat[..., 0, 0].numel()
        u = torch.view_as_real(u_hat).reshape(rows, k, hk, k, wk, 2).permute(2, 4, 0, 5, 1, 3)
        filt = f.reshape(n_filters, k, hk, k, wk).permute(2, 4, 1, 3, 0).reshape(hk * wk, k * k, n_filters)
        out = torch.bmm(u.reshape(hk * wk, rows * 2, k * k), filt / (k * k))        # (hk*wk, rows*2, F)
        out = out.reshape(hk, wk, rows, 2, n_filters).permute(2, 4, 0, 1, 3).contiguous()
        return torch.view_as_complex(out).reshape(*lead, n_filters, hk, wk)

    def _lowpass(self, u: torch.Tensor, res: int) -> torch.Tensor:
        """``u * phi_J`` of a real signal at resolution ``res``, subsampled to ``2**J`` and unpadded
        (one pixel of border cut, as kymatio). ``phi_J`` is a separable Gaussian, so the whole linear map
        is ``rows @ u @ cols.T`` with two small real matrices (:func:`_lowpass_operators`): no FFT."""
        rows, cols = getattr(self, f"lowpass_rows_{res}"), getattr(self, f"lowpass_cols_{res}")
        return rows @ (u @ cols.T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *batch, M, N = x.shape
        if (M, N) != self.shape:
            raise ValueError(f"expected images of shape {self.shape}, got {(M, N)}")
        maps = x.reshape(-1, 1, M, N).float()
        # Small chunks keep the (maps, L, L, Mp, Np) intermediates in cache: ~2x faster on CPU.
        out = torch.cat([self._transform(c) for c in maps.split(self.chunk_size)])
        return out.reshape(*batch, *out.shape[1:])

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        J = self.J
        x = F.pad(x, (self.pads[2], self.pads[3], self.pads[0], self.pads[1]), mode="reflect")[:, 0]
        u0 = torch.fft.fft2(x)                                              # (B, Mp, Np)
        order0 = [self._lowpass(x, 0)[:, None]]
        order1, order2 = [], []
        for j1 in range(J):
            u1 = torch.fft.ifft2(self._filter(u0, self._psi(j1, 0), 2 ** j1)).abs()  # (B, L, Mp/2^j1, ...)
            order1.append(self._lowpass(u1, j1))
            blocks = []
            if j1 + 1 < J:
                u1_hat = torch.fft.fft2(u1)
            for j2 in range(j1 + 1, J):
                u2 = torch.fft.ifft2(self._filter(u1_hat, self._psi(j2, j1), 2 ** (j2 - j1))).abs()
                blocks.append(self._lowpass(u2, j2))                        # (B, L, L, h, w)
            if blocks:
                order2.append(torch.cat(blocks, dim=2).flatten(1, 2))
        return torch.cat(order0 + order1 + order2, dim=1)
