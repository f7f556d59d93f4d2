"""Seeded numpy augmentation of grey uint8 radiographs; the view label never changes.

Archives hold radiographs stored rotated, mirrored, inverted (MONOCHROME1 read
as MONOCHROME2), tightly collimated or oddly windowed. None of that changes
whether a film is frontal or lateral, so training shows the model all of it:

- ALWAYS one of the 8 orientations (rotation by k * 90 degrees, k uniform in 0..3, then
  a horizontal flip with p=0.5: a uniform draw from the dihedral group, so every
  orientation is seen equally often and invariance is learned, not optional),
- greyscale inversion with p=0.5 (an archive's MONOCHROME1 read as MONOCHROME2),
- a random crop of 70-100 % of each side, resized back (zoom and aspect change),
- the opposite: the film shrunk to 60-100 % of each side on a dark canvas (a small
  film scanned on a large plate, letterboxed screenshots, a panel cut from a figure),
- contrast, brightness and gamma changes,
- gaussian noise,
- optional small rotation (+-10 degrees).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = ["AugmentConfig", "augment_batch", "augment_image", "augmented_copies"]


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges; the defaults are what the shipped model used."""

    p_rot90: float = 1.0  # draw k in 0..3 uniformly with this probability
    p_hflip: float = 0.5  # with p_rot90=1: a uniform draw from the 8 dihedral orientations
    p_vflip: float = 0.0  # redundant with rot90 + hflip (vflip = rot180 o hflip)
    p_invert: float = 0.5
    p_crop: float = 0.7
    crop_min: float = 0.7  # fraction of each side kept
    p_zoom_out: float = 0.2  # applied only when no crop was drawn
    zoom_out_min: float = 0.6  # fraction of each side the shrunk film covers
    p_intensity: float = 0.8
    gamma_range: tuple[float, float] = (0.6, 1.6)
    contrast_range: tuple[float, float] = (0.75, 1.3)
    brightness: float = 20.0  # +- grey levels
    p_noise: float = 0.3
    noise_sigma: float = 8.0  # upper bound of the noise standard deviation, grey levels
    p_small_rotation: float = 0.5
    max_small_angle: float = 10.0  # degrees


def _crop_resize(img: np.ndarray, rng: np.random.Generator, crop_min: float) -> np.ndarray:
    h, w = img.shape
    ch = max(8, round(h * rng.uniform(crop_min, 1.0)))
    cw = max(8, round(w * rng.uniform(crop_min, 1.0)))
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    crop = Image.fromarray(img[top : top + ch, left : left + cw])
    return np.asarray(crop.resize((w, h), Image.Resampling.BILINEAR))


def _zoom_out(img: np.ndarray, rng: np.random.Generator, scale_min: float) -> np.ndarray:
    h, w = img.shape
    sh = max(8, round(h * rng.uniform(scale_min, 1.0)))
    sw = max(8, round(w * rng.uniform(scale_min, 1.0)))
    small = np.asarray(Image.fromarray(img).resize((sw, sh), Image.Resampling.BILINEAR))
    # The darkest level, as around a collimated film; inversion, drawn later, makes it white.
    canvas = np.full_like(img, img.min())
    top = int(rng.integers(0, h - sh + 1))
    left = int(rng.integers(0, w - sw + 1))
    canvas[top : top + sh, left : left + sw] = small
    return canvas


def _small_rotation(img: np.ndarray, rng: np.random.Generator, max_angle: float) -> np.ndarray:
    angle = float(rng.uniform(-max_angle, max_angle))
    # Fill with the darkest level: collimation borders in radiographs are black.
    fill = int(img.min())
    return np.asarray(
        Image.fromarray(img).rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=fill)
    )


def _intensity(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    x = img.astype(np.float32) / 255.0
    x = np.power(x, rng.uniform(*cfg.gamma_range))
    mean = float(x.mean())
    x = (x - mean) * rng.uniform(*cfg.contrast_range) + mean
    x = x * 255.0 + rng.uniform(-cfg.brightness, cfg.brightness)
    return np.clip(x, 0, 255).astype(np.uint8)


def augment_image(
    img: np.ndarray, rng: np.random.Generator, config: AugmentConfig | None = None
) -> np.ndarray:
    """One grey uint8 (H, W) image -> an augmented (H, W) uint8 image (square input keeps H, W)."""
    cfg = config or AugmentConfig()
    if img.ndim != 2 or img.dtype != np.uint8:
        raise ValueError(f"expected a grey uint8 (H, W) image, got {img.dtype} {img.shape}")
    x = img
    if rng.random() < cfg.p_small_rotation:
        x = _small_rotation(x, rng, cfg.max_small_angle)
    if rng.random() < cfg.p_crop:
        x = _crop_resize(x, rng, cfg.crop_min)
    elif rng.random() < cfg.p_zoom_out:
        x = _zoom_out(x, rng, cfg.zoom_out_min)
    if rng.random() < cfg.p_intensity:
        x = _intensity(x, rng, cfg)
    if rng.random() < cfg.p_invert:
        x = 255 - x
    if rng.random() < cfg.p_rot90:
        x = np.rot90(x, k=int(rng.integers(0, 4)))
    if rng.random() < cfg.p_hflip:
        x = x[:, ::-1]
    if rng.random() < cfg.p_vflip:
        x = x[::-1, :]
    if rng.random() < cfg.p_noise:
        noise = rng.normal(0.0, rng.uniform(0.0, cfg.noise_sigma), size=x.shape)
        x = np.clip(x.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(x, dtype=np.uint8)


def augment_batch(
    images: np.ndarray, rng: np.random.Generator, config: AugmentConfig | None = None
) -> np.ndarray:
    """(N, H, W) uint8 -> augmented (N, H, W) uint8, one draw per image."""
    return np.stack([augment_image(img, rng, config) for img in images])


def augmented_copies(images: np.ndarray, copies: int, seed: int) -> np.ndarray:
    """Each image as stored plus ``copies - 1`` augmented versions, ``(copies * N, H, W)``
    with the stored images first (all the augmentations the view model trains with; the
    invariant outputs ignore the turns anyway)."""
    rng = np.random.default_rng(seed)
    return np.concatenate([images] + [augment_batch(images, rng) for _ in range(copies - 1)])
