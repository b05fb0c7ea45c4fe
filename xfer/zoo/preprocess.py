"""Image preprocessing that matches the pretrained EfficientNet-Lite0 (both backends).

EfficientNet-Lite was trained on RGB images resized so that the short side is 256/224 of the
crop, centre-cropped, and scaled with ``(x - 127) / 128`` (pixels in 0..255). Only NumPy and
scikit-image are used (no PIL, no torchvision).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from xfer.exceptions import InvalidArgumentError, InvalidTypeError
from xfer.zoo._deps import require

#: EfficientNet-Lite input scaling: ``(x - MEAN) / STD`` with pixels in 0..255.
MEAN = 127.0
STD = 128.0
#: Ratio of the resized short side to the crop (256 / 224, the ImageNet evaluation recipe).
RESIZE_RATIO = 256.0 / 224.0

_MODES = ("crop", "stretch")


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Return an H x W x 3 view of one image: grey replicated to 3 channels, alpha dropped.

    Parameters
    ----------
    image : ndarray
        H x W (grey), H x W x 1 (grey), H x W x 3 (RGB) or H x W x 4 (RGBA).

    Returns
    -------
    ndarray
        H x W x 3, same dtype.

    Raises
    ------
    InvalidArgumentError
        Any other shape.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return image[:, :, :3]
    raise InvalidArgumentError(
        f"An image must be H x W (grey) or H x W x 1/3/4 (RGB, RGBA); got shape {image.shape}."
    )


def _as_image_list(images: Any) -> list[np.ndarray]:
    if isinstance(images, np.ndarray):
        if images.ndim == 2:
            return [images]
        if images.ndim == 3:
            # H x W x C with C in (1, 3, 4) is one image; otherwise a batch of grey N x H x W.
            return [images] if images.shape[2] in (1, 3, 4) else list(images)
        if images.ndim == 4:
            return list(images)
        raise InvalidArgumentError(
            "images must be one image (H x W or H x W x C), a batch (N x H x W or N x H x W x C) "
            f"or a list of images; got an array of shape {images.shape}."
        )
    if isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
        if len(images) == 0:
            raise InvalidArgumentError("images is empty: give at least one image.")
        return [np.asarray(image) for image in images]
    raise InvalidTypeError(
        f"images must be a NumPy array or a list of arrays, got {type(images).__name__}."
    )


def _crop_box(height: int, width: int, image_size: int, mode: str) -> tuple[int, int]:
    """The size to resize to before the centre crop."""
    if mode == "stretch":
        return image_size, image_size
    short = max(int(round(image_size * RESIZE_RATIO)), image_size)
    if height <= width:
        return short, max(int(round(width * short / height)), short)
    return max(int(round(height * short / width)), short), short


def efficientnet_lite0_preprocess(
    images: Any,
    image_size: int = 224,
    mode: str = "crop",
    pixel_max: float | None = None,
) -> np.ndarray:
    """Turn images into the float32 N x 3 x S x S input of EfficientNet-Lite0 (both backends).

    Parameters
    ----------
    images : ndarray or list of ndarray
        One image (H x W grey, H x W x 1/3/4), a batch (N x H x W grey, N x H x W x C) or a list
        of images of any sizes. Grey images are replicated to 3 channels (Fashion-MNIST, faces);
        an alpha channel is dropped.
    image_size : int, default=224
        The output side S; build the model with the same ``image_size``.
    mode : {"crop", "stretch"}, default="crop"
        ``"crop"``: resize the short side to ``round(S * 256 / 224)`` keeping the aspect ratio,
        then centre-crop S x S (the ImageNet evaluation recipe; use it for photos).
        ``"stretch"``: resize the whole image to S x S (use it for small centred images such as
        Fashion-MNIST, where a crop would cut the object).
    pixel_max : float, optional
        The value of white in the input. Default: 255 for integer images and for float images
        whose maximum is above 1, else 1.0 (float images in [0, 1], as ``skimage`` gives).
        Pass it explicitly for float images to avoid the guess.

    Returns
    -------
    ndarray
        float32, N x 3 x S x S, RGB, ``(x - 127) / 128`` with x in 0..255.

    Raises
    ------
    InvalidArgumentError
        An empty list, an image of an unsupported shape, an unknown mode or a bad size.
    InvalidTypeError
        ``images`` is not an array or a list of arrays.

    Examples
    --------
    >>> import numpy as np
    >>> x = efficientnet_lite0_preprocess(np.zeros((10, 28, 28), np.uint8), 64, mode="stretch")
    >>> x.shape, float(x.min())
    ((10, 3, 64, 64), -0.9921875)
    """
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
        raise InvalidTypeError(f"image_size must be an int, got {type(image_size).__name__}.")
    if image_size < 1:
        raise InvalidArgumentError(f"image_size must be positive, got {image_size}.")
    if mode not in _MODES:
        raise InvalidArgumentError(f"Unknown mode {mode!r}: use 'crop' or 'stretch'.")
    if pixel_max is not None and not pixel_max > 0:
        raise InvalidArgumentError(f"pixel_max must be positive, got {pixel_max!r}.")
    transform = require("skimage.transform", "xfer.zoo.efficientnet_lite0_preprocess")

    image_list = _as_image_list(images)
    out = np.empty((len(image_list), 3, image_size, image_size), dtype=np.float32)
    for n, raw in enumerate(image_list):
        if not np.issubdtype(raw.dtype, np.number) and raw.dtype != np.bool_:
            raise InvalidTypeError(f"Image {n} has dtype {raw.dtype}; images must be numeric.")
        image = to_rgb(raw).astype(np.float32)
        scale = pixel_max
        if scale is None:
            is_int = np.issubdtype(raw.dtype, np.integer)
            scale = 255.0 if is_int or (image.size and float(image.max()) > 1.0) else 1.0
        image *= 255.0 / float(scale)
        height, width = image.shape[:2]
        new_h, new_w = _crop_box(height, width, image_size, mode)
        if (new_h, new_w) != (height, width):
            image = transform.resize(
                image, (new_h, new_w, 3), order=1, mode="edge", anti_aliasing=True,
                preserve_range=True,
            ).astype(np.float32)  # fmt: skip
        top, left = (new_h - image_size) // 2, (new_w - image_size) // 2
        crop = image[top : top + image_size, left : left + image_size]
        out[n] = ((crop - MEAN) / STD).transpose(2, 0, 1)
    return out
