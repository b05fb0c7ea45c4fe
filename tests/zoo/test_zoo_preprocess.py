"""Preprocessing for EfficientNet-Lite0: shapes, scaling, crop geometry, grey images, errors."""

from __future__ import annotations

import numpy as np
import pytest

from xfer.exceptions import InvalidArgumentError, InvalidTypeError
from xfer.zoo import efficientnet_lite0_preprocess, to_rgb

pytest.importorskip("skimage", reason="scikit-image is not installed")


def test_constant_images_map_to_the_model_scaling():
    white = np.full((30, 40, 3), 255, np.uint8)
    black = np.zeros((30, 40, 3), np.uint8)
    x = efficientnet_lite0_preprocess([white, black], 32)
    assert x.shape == (2, 3, 32, 32) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], (255 - 127) / 128, atol=1e-5)
    np.testing.assert_allclose(x[1], -127 / 128, atol=1e-5)


def test_float_images_in_unit_range_and_explicit_pixel_max():
    image = np.full((20, 20, 3), 0.5, np.float64)
    expected = (127.5 - 127) / 128
    np.testing.assert_allclose(efficientnet_lite0_preprocess(image, 16), expected, atol=1e-5)
    np.testing.assert_allclose(
        efficientnet_lite0_preprocess(np.full((20, 20), 8.0), 16, pixel_max=16), expected, atol=1e-5
    )


def test_resize_short_side_then_centre_crop_keeps_the_centre():
    # a 100 x 200 image whose columns encode their x position
    image = np.tile(np.linspace(0, 255, 200)[None, :, None], (100, 1, 3)).astype(np.uint8)
    x = efficientnet_lite0_preprocess(image, 56)
    assert x.shape == (1, 3, 56, 56)
    # short side 64 (= 56 * 256 / 224), long side 128: the crop keeps columns 36..91 of 128
    centre = (x[0, 0, :, 27:29].mean() * 128 + 127) / 255
    assert abs(centre - 0.5) < 0.02
    assert x[0, 0, 0, 0] > -0.75 and x[0, 0, 0, -1] < 0.75  # edges were cropped away
    # the RGB channels are equal for a grey-level image, order is channel-first
    np.testing.assert_array_equal(x[0, 0], x[0, 2])


def test_channels_keep_rgb_order():
    image = np.zeros((8, 8, 3), np.uint8)
    image[..., 0] = 255
    x = efficientnet_lite0_preprocess(image, 8, mode="stretch")
    assert x[0, 0].min() > 0.99 and x[0, 1].max() < -0.99 and x[0, 2].max() < -0.99


def test_grey_batches_and_stretch_mode_for_fashion_mnist_sized_images():
    batch = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    x = efficientnet_lite0_preprocess(batch, 64, mode="stretch")
    assert x.shape == (5, 3, 64, 64)
    np.testing.assert_array_equal(x[:, 0], x[:, 1])
    # stretch keeps the whole image: its mean brightness is kept
    np.testing.assert_allclose(
        x.mean(axis=(1, 2, 3)), (batch.mean(axis=(1, 2)) - 127) / 128, atol=0.02
    )
    same_size = efficientnet_lite0_preprocess(batch, 28, mode="stretch")
    np.testing.assert_allclose(same_size[:, 0], (batch - 127.0) / 128, atol=1e-6)


def test_lists_of_mixed_sizes_and_rgba_and_n_h_w_c_batches():
    images = [
        np.zeros((40, 30, 4), np.uint8),
        np.zeros((10, 50), np.uint8),
        np.zeros((9, 9, 1), np.uint8),
    ]
    assert efficientnet_lite0_preprocess(images, 24).shape == (3, 3, 24, 24)
    assert efficientnet_lite0_preprocess(np.zeros((2, 10, 12, 3), np.uint8), 8).shape == (
        2,
        3,
        8,
        8,
    )


def test_to_rgb():
    assert to_rgb(np.zeros((4, 5))).shape == (4, 5, 3)
    assert to_rgb(np.zeros((4, 5, 4))).shape == (4, 5, 3)
    with pytest.raises(InvalidArgumentError, match=r"H x W x 1/3/4.*\(4, 5, 2\)"):
        to_rgb(np.zeros((4, 5, 2)))


def test_errors():
    with pytest.raises(InvalidArgumentError, match="images is empty"):
        efficientnet_lite0_preprocess([])
    with pytest.raises(InvalidTypeError, match="NumPy array or a list"):
        efficientnet_lite0_preprocess("cat.jpg")
    with pytest.raises(InvalidArgumentError, match=r"got an array of shape \(1, 1, 2, 2, 3\)"):
        efficientnet_lite0_preprocess(np.zeros((1, 1, 2, 2, 3)))
    with pytest.raises(InvalidArgumentError, match="Unknown mode 'pad'"):
        efficientnet_lite0_preprocess(np.zeros((4, 4)), mode="pad")
    with pytest.raises(InvalidTypeError, match="image_size must be an int"):
        efficientnet_lite0_preprocess(np.zeros((4, 4)), image_size="224")
    with pytest.raises(InvalidArgumentError, match="image_size must be positive"):
        efficientnet_lite0_preprocess(np.zeros((4, 4)), image_size=0)
    with pytest.raises(InvalidArgumentError, match="pixel_max must be positive"):
        efficientnet_lite0_preprocess(np.zeros((4, 4)), pixel_max=0)
    with pytest.raises(InvalidTypeError, match="dtype <U1"):
        efficientnet_lite0_preprocess([np.array([["a"]])])
