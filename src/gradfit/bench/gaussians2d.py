"""A generic, non-OOF benchmark model: 2-D Gaussian sources on an image, Cauchy likelihood.

The same pair as :mod:`gradfit.bench.reference`, so that the NumPy-versus-PyTorch
result is not specific to holography: :func:`neg_log_likelihood_numpy` (the
"before", fitted with finite-difference gradients) and
:func:`neg_log_likelihood_torch` (the "after", exact autodiff gradients), which
differ in three lines (``np`` -> ``torch``).

Model: ``image(x, y) = b + sum_k A_k exp(-((x - x_k)^2 + (y - y_k)^2) / (2 w_k^2))``
on an ``nn x nn`` pixel grid (pixel units), with a robust Cauchy likelihood of
fixed scale gamma, ``−log L = sum log(1 + ((data - image) / gamma)^2)`` (constants
dropped). The parameter vector is ``theta = [b, A_1, x_1, y_1, w_1, A_2, ...]``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

__all__ = [
    "ImageSetup",
    "simulate",
    "model_image_numpy",
    "neg_log_likelihood_numpy",
    "neg_log_likelihood_torch",
]


@dataclass
class ImageSetup:
    """The data of a Gaussian-sources fit (NumPy or torch arrays).

    Attributes
    ----------
    X, Y : array, shape (nn, nn)
        Pixel coordinates (columns and rows).
    data : array, shape (nn, nn)
        The image.
    gamma : float
        Cauchy scale.
    n_sources : int
        Number of Gaussian sources.
    theta_true : numpy.ndarray or None
        The truth, for simulations.
    """

    X: object
    Y: object
    data: object
    gamma: float
    n_sources: int
    theta_true: object = None

    @property
    def n_params(self) -> int:
        """Length of ``theta``: background plus four per source."""
        return 1 + 4 * self.n_sources

    @property
    def nn(self) -> int:
        """Pixels per side."""
        return int(self.data.shape[-1])

    def to_torch(self, device="cpu"):
        """The same setup with float64 torch tensors on ``device``.

        Parameters
        ----------
        device : str or torch.device
            ``'cpu'`` or ``'cuda'``.

        Returns
        -------
        ImageSetup
        """
        import torch

        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={device!r} requested but no CUDA GPU is available")

        def t(a):
            return torch.as_tensor(np.asarray(a), dtype=torch.float64, device=dev)

        return replace(self, X=t(self.X), Y=t(self.Y), data=t(self.data))


def simulate(
    nn: int = 64,
    n_sources: int = 3,
    *,
    gamma: float = 0.05,
    outlier_fraction: float = 0.05,
    seed: int = 0,
) -> ImageSetup:
    """An image of Gaussian sources with Cauchy-scale noise and gross outliers.

    Parameters
    ----------
    nn : int
        Pixels per side (>= 8).
    n_sources : int
        Number of sources (>= 1).
    gamma : float
        Scale of the Gaussian noise, also the Cauchy scale of the fit.
    outlier_fraction : float
        Fraction of pixels replaced by gross outliers (up to 20 gamma off).
    seed : int
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    ImageSetup
    """
    if not isinstance(nn, (int, np.integer)) or nn < 8:
        raise ValueError(f"nn must be an integer >= 8, got {nn!r}")
    if not isinstance(n_sources, (int, np.integer)) or n_sources < 1:
        raise ValueError(f"n_sources must be an integer >= 1, got {n_sources!r}")
    if not gamma > 0:
        raise ValueError(f"gamma must be positive, got {gamma!r}")
    if not 0 <= outlier_fraction < 1:
        raise ValueError(f"outlier_fraction must be in [0, 1), got {outlier_fraction!r}")
    rng = np.random.default_rng(seed)
    X, Y = np.meshgrid(np.arange(nn, dtype=np.float64), np.arange(nn, dtype=np.float64))
    src = []
    for _ in range(n_sources):
        src += [rng.uniform(0.5, 1.5), rng.uniform(0.2, 0.8) * nn, rng.uniform(0.2, 0.8) * nn,
                rng.uniform(0.05, 0.1) * nn + 1.0]
    theta = np.array([0.1] + src)
    st = ImageSetup(X=X, Y=Y, data=np.zeros((nn, nn)), gamma=float(gamma), n_sources=n_sources)
    img = model_image_numpy(theta, st) + rng.normal(0.0, gamma, (nn, nn))
    bad = rng.random((nn, nn)) < outlier_fraction
    img[bad] += rng.uniform(-20 * gamma, 20 * gamma, bad.sum())
    return replace(st, data=img, theta_true=theta)


def model_image_numpy(theta, st: ImageSetup) -> np.ndarray:
    """The model image (NumPy), same body as the likelihood."""
    b, A, x0, y0, w = theta[0], theta[1::4], theta[2::4], theta[3::4], theta[4::4]
    r2 = (st.X - x0[:, None, None]) ** 2 + (st.Y - y0[:, None, None]) ** 2
    return b + np.sum(A[:, None, None] * np.exp(-r2 / (2 * w[:, None, None] ** 2)), 0)


def neg_log_likelihood_numpy(theta, st: ImageSetup) -> float:
    """Cauchy −log L of the image, NumPy (the "before").

    Parameters
    ----------
    theta : numpy.ndarray
        ``[b, A_1, x_1, y_1, w_1, ...]``.
    st : ImageSetup
        NumPy setup.

    Returns
    -------
    float
        ``sum(log1p(((data - image) / gamma)**2))``.
    """
    b, A, x0, y0, w = theta[0], theta[1::4], theta[2::4], theta[3::4], theta[4::4]
    r2 = (st.X - x0[:, None, None]) ** 2 + (st.Y - y0[:, None, None]) ** 2
    image = b + np.sum(A[:, None, None] * np.exp(-r2 / (2 * w[:, None, None] ** 2)), 0)
    return np.sum(np.log1p(((st.data - image) / st.gamma) ** 2))


def neg_log_likelihood_torch(theta, st: ImageSetup):
    """Cauchy −log L of the image, PyTorch (the "after"): differentiable.

    Parameters
    ----------
    theta : torch.Tensor
        ``[b, A_1, x_1, y_1, w_1, ...]``, float64, on the setup's device.
    st : ImageSetup
        Torch setup (:meth:`ImageSetup.to_torch`).

    Returns
    -------
    torch.Tensor
        0-d tensor ``sum(log1p(((data - image) / gamma)**2))``.
    """
    import torch

    b, A, x0, y0, w = theta[0], theta[1::4], theta[2::4], theta[3::4], theta[4::4]
    r2 = (st.X - x0[:, None, None]) ** 2 + (st.Y - y0[:, None, None]) ** 2
    image = b + torch.sum(A[:, None, None] * torch.exp(-r2 / (2 * w[:, None, None] ** 2)), 0)
    return torch.sum(torch.log1p(((st.data - image) / st.gamma) ** 2))
