"""From a noiseless rendering to stored pixel values: bias field, motion ghosts, Rician noise, quantisation.

Order follows the physics: the coil's smooth sensitivity (bias) multiplies the object;
motion during the acquisition replicates it along the phase-encoding direction
(ghosts); thermal noise is complex Gaussian, so the magnitude image is Rician (the
background is not zero but a noise floor); finally the scanner scales to integers that
fit ``BitsStored``, optionally stores them inverted (MONOCHROME1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["ROSE_THRESHOLD", "BiasField", "StoredImage", "acquire", "rose_visible", "sample_bias", "to_stored"]

#: Rose criterion: an object is detectable by a reader when its contrast over the noise, times the
#: square root of its area in pixels, reaches about 5 (Rose 1948; Burgess 1999).
ROSE_THRESHOLD = 5.0


@dataclass(frozen=True)
class BiasField:
    """A smooth multiplicative field in patient space: exp(linear + quadratic) times a posterior-coil gain.

    ``centre`` (3,) mm, ``linear`` (3,) per 150 mm, ``quadratic`` (3, 3) per (150 mm)^2 and
    ``coil`` the log gain per 150 mm towards posterior (+y): the spine coil is under the
    patient's back.
    """

    centre: np.ndarray
    linear: np.ndarray
    quadratic: np.ndarray
    coil: float

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Gain (...) float32 at patient points (..., 3) in mm."""
        r = (points - self.centre) / 150.0
        log_gain = r @ self.linear + np.einsum("...i,ij,...j->...", r, self.quadratic, r) + self.coil * r[..., 1]
        return np.exp(np.clip(log_gain, -1.5, 1.0)).astype(np.float32)


def sample_bias(rng: np.random.Generator, centre: np.ndarray, strength: float) -> BiasField:
    """Draw one study's bias field; ``strength`` 0 gives a flat field."""
    q = rng.normal(0.0, 0.2, (3, 3))
    return BiasField(
        centre=np.asarray(centre, dtype=np.float64),
        linear=rng.normal(0.0, 0.3, 3) * strength,
        quadratic=0.5 * (q + q.T) * strength,
        coil=float(rng.uniform(0.3, 0.9)) * strength,
    )


def acquire(
    image: np.ndarray,
    gain: np.ndarray,
    *,
    sigma: float,
    rng: np.random.Generator,
    ghosting: float = 0.0,
    ghost_period: int = 64,
    phase_axis: int = 0,
    blur_px: float = 0.6,
) -> np.ndarray:
    """Apply bias, blur, ghosts and Rician noise to a noiseless image.

    Parameters
    ----------
    image: numpy.ndarray
        (rows, columns) float32, tissue units.
    gain: numpy.ndarray
        (rows, columns) float32 bias gain.
    sigma: float
        Noise standard deviation per channel (tissue units).
    rng: numpy.random.Generator
        Noise source.
    ghosting: float
        Amplitude of the first ghost pair relative to the image; 0 for none.
    ghost_period: int
        Shift in pixels between successive ghosts along ``phase_axis``.
    phase_axis: int
        0 when phase encoding runs along columns (``"COL"``: ghosts move up/down), 1 along rows.
    blur_px: float
        Standard deviation (pixels) of the Gaussian point-spread function; 0 for none.

    Returns
    -------
    numpy.ndarray
        (rows, columns) float32 magnitude image.
    """
    obj = ndimage.gaussian_filter(image * gain, blur_px) if blur_px > 0 else image * gain
    if ghosting > 0:
        ghosts = np.zeros_like(obj)
        amp = ghosting
        for k in (1, 2, 3):
            ghosts += (
                0.5
                * amp
                * (np.roll(obj, k * ghost_period, axis=phase_axis) + np.roll(obj, -k * ghost_period, axis=phase_axis))
            )
            amp *= 0.5
        obj = obj + ghosts
    re = obj + rng.normal(0.0, sigma, obj.shape).astype(np.float32)
    im = rng.normal(0.0, sigma, obj.shape).astype(np.float32)
    return np.sqrt(re * re + im * im)


@dataclass(frozen=True)
class StoredImage:
    """Pixel values as written: ``pixels`` (rows, columns) uint16 plus what a reader needs to display them."""

    pixels: np.ndarray
    window_center: float
    window_width: float


def to_stored(
    magnitude: np.ndarray,
    *,
    bits_stored: int,
    peak: float,
    rescale: tuple[float, float] | None,
    monochrome1: bool,
) -> StoredImage:
    """Scale a magnitude image to unsigned integers below ``2**bits_stored``.

    Parameters
    ----------
    magnitude: numpy.ndarray
        (rows, columns) float32, >= 0.
    bits_stored: int
        BitsStored, 8..16.
    peak: float
        Stored value of the image's 99.8th percentile (kept below the maximum).
    rescale: tuple[float, float] | None
        (slope, intercept) of the modality LUT, used for the window only.
    monochrome1: bool
        Store ``max - value`` (MONOCHROME1); a MONOCHROME1 reader shows the same anatomy.

    Returns
    -------
    StoredImage
        uint16 pixels and a window (centre, width) in rescaled units.
    """
    top = (1 << bits_stored) - 1
    ref = float(np.percentile(magnitude, 99.8)) or 1.0
    values = np.clip(np.rint(magnitude * (min(peak, 0.9 * top) / ref)), 0, top).astype(np.uint16)
    lo, hi = (float(v) for v in np.percentile(values, [1.0, 99.5]))
    slope, intercept = rescale if rescale is not None else (1.0, 0.0)
    centre = slope * 0.5 * (lo + hi) + intercept
    width = max(slope * (hi - lo), 1.0)
    if monochrome1:
        values = (top - values).astype(np.uint16)
        centre = slope * (top - 0.5 * (lo + hi)) + intercept
    return StoredImage(values, round(centre, 2), round(width, 2))


def rose_visible(
    signal: float, background: float, pixels: int, *, gain: float, sigma: float, contrast_gamma: float = 1.0
) -> bool:
    """Whether a lesion can be seen on the acquired image (the Rose criterion, :data:`ROSE_THRESHOLD`).

    Parameters
    ----------
    signal, background: float
        Mean noiseless signal over the lesion's pixels with and without it (tissue units,
        before the study's contrast power).
    pixels: int
        The lesion's pixels in this image.
    gain: float
        The bias field's gain at the lesion.
    sigma: float
        Noise standard deviation per channel, in the units of the image after the contrast power.
    contrast_gamma: float
        The study's contrast power applied to the tissue signal.

    Returns
    -------
    bool
        ``gain * |signal**gamma - background**gamma| / sigma * sqrt(pixels) >= ROSE_THRESHOLD``.
    """
    if sigma <= 0:
        return True
    contrast = gain * abs(max(signal, 0.0) ** contrast_gamma - max(background, 0.0) ** contrast_gamma)
    return contrast / sigma * float(np.sqrt(max(pixels, 0))) >= ROSE_THRESHOLD
