"""Checks that a written figure is a real, non-blank PNG image of the expected size."""

from __future__ import annotations

import numpy as np


def assert_png(path, size_px=None, min_std: float = 0.02, min_ink: float = 0.01) -> np.ndarray:
    """Read ``path`` with matplotlib and check it is a drawn image.

    Parameters
    ----------
    size_px : (width, height), optional
        Expected pixel size (figure size in inches times dpi).
    min_std : float
        Smallest standard deviation of the pixel values (0..1): a blank image has 0.
    min_ink : float
        Smallest fraction of pixels that are not background white.

    Returns
    -------
    numpy.ndarray
        The image, (height, width, channels) with values in [0, 1].
    """
    import matplotlib.image as mpimg

    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG file"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4), (path, img.shape)
    if size_px is not None:
        w, h = (int(round(v)) for v in size_px)
        assert abs(img.shape[1] - w) <= 1 and abs(img.shape[0] - h) <= 1, (
            f"{path}: {img.shape[1]}x{img.shape[0]} pixels, expected {w}x{h}")
    rgb = img[..., :3]
    assert float(rgb.std()) >= min_std, f"{path}: blank image (pixel std {rgb.std():.4f})"
    ink = float(np.mean(np.any(rgb < 0.9, axis=-1)))
    assert ink >= min_ink, f"{path}: only {ink:.2%} of the pixels are drawn"
    return img
