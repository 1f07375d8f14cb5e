"""capsnet_jax.data.affine: the host-side transforms, on hand-computed cases
and against scipy.ndimage (an independent implementation)."""

import numpy as np
import pytest

from capsnet_jax.data import affine

# A known 3x3 image (values x10 so that bilinear averages stay integers).
A = np.array([[10, 20, 30],
              [40, 50, 60],
              [70, 80, 90]], np.uint8)


def _warp(image, matrix, shift=(0.0, 0.0)):
  return affine.warp(image[None], matrix, shift)[0]


def test_identity_returns_the_input_exactly():
  x = np.random.default_rng(0).integers(0, 256, (5, 28, 28, 1), np.uint8)
  out = affine.warp(x, affine.identity())
  assert out.dtype == np.uint8 and out.shape == x.shape
  np.testing.assert_array_equal(out, x)


def test_rotation_by_90_degrees_counter_clockwise():
  np.testing.assert_array_equal(_warp(A, affine.rotation(90)),
                                [[30, 60, 90],
                                 [20, 50, 80],
                                 [10, 40, 70]])
  np.testing.assert_array_equal(_warp(A, affine.rotation(-90)),
                                [[70, 40, 10],
                                 [80, 50, 20],
                                 [90, 60, 30]])
  np.testing.assert_array_equal(_warp(A, affine.rotation(180)),
                                [[90, 80, 70],
                                 [60, 50, 40],
                                 [30, 20, 10]])


def test_rotation_of_an_even_size_image_about_its_centre():
  # 4x4: the centre is the corner the middle four pixels share.
  x = np.arange(16, dtype=np.uint8).reshape(4, 4)
  np.testing.assert_array_equal(_warp(x, affine.rotation(90)),
                                [[3, 7, 11, 15],
                                 [2, 6, 10, 14],
                                 [1, 5, 9, 13],
                                 [0, 4, 8, 12]])


def test_one_pixel_translations_fill_with_zero():
  np.testing.assert_array_equal(_warp(A, affine.identity(), (1, 0)),
                                [[0, 10, 20],
                                 [0, 40, 50],
                                 [0, 70, 80]])
  np.testing.assert_array_equal(_warp(A, affine.identity(), (0, 1)),
                                [[0, 0, 0],
                                 [10, 20, 30],
                                 [40, 50, 60]])
  np.testing.assert_array_equal(_warp(A, affine.identity(), (-1, -1)),
                                [[50, 60, 0],
                                 [80, 90, 0],
                                 [0, 0, 0]])


def test_half_pixel_translation_is_bilinear():
  row = np.array([[100, 200, 40]], np.uint8)  # one row of three pixels
  # Output x takes the input at x - 0.5: (0 + 100) / 2, (100 + 200) / 2,
  # (200 + 40) / 2.
  np.testing.assert_array_equal(_warp(row, affine.identity(), (0.5, 0)),
                                [[50, 150, 120]])


def test_scale_and_shear_about_the_centre():
  # Scale 2: output (0, 0) reads the input at (0.5, 0.5), the mean of
  # 10, 20, 40, 50; the centre stays.
  out = _warp(A.astype(np.float32), affine.scale(2.0))
  assert out.dtype == np.float32
  assert out[0, 0] == pytest.approx(30.0)
  assert out[1, 1] == pytest.approx(50.0)
  assert out[2, 2] == pytest.approx(70.0)  # (50 + 60 + 80 + 90) / 4
  # Shear 1: the top row moves one pixel right, the bottom one left.
  np.testing.assert_array_equal(_warp(A, affine.shear(1.0)),
                                [[0, 10, 20],
                                 [40, 50, 60],
                                 [80, 90, 0]])


def test_per_image_matrices_and_channels():
  x = np.stack([A, A[::-1]])[..., None]  # [2, 3, 3, 1]
  out = affine.warp(x, affine.rotation(np.array([90.0, -90.0])),
                    np.array([[0.0, 0.0], [1.0, 0.0]]))
  assert out.shape == (2, 3, 3, 1)
  np.testing.assert_array_equal(out[0, ..., 0], _warp(A, affine.rotation(90)))
  np.testing.assert_array_equal(
      out[1, ..., 0], _warp(A[::-1], affine.rotation(-90), (1.0, 0.0)))


def test_rotation_matches_scipy_ndimage():
  """scipy.ndimage.rotate (bilinear, zero fill, same size, about the centre)
  on a smooth blob away from the border: the same image within rounding."""
  ndimage = pytest.importorskip("scipy.ndimage")
  yy, xx = np.mgrid[0:28, 0:28]
  blob = 255 * np.exp(-((xx - 11.0) ** 2 / 18 + (yy - 15.0) ** 2 / 8))
  x = np.clip(np.rint(blob), 0, 255).astype(np.uint8)
  for angle in (15.0, -30.0, 45.0):
    ours = affine.warp(x[None], affine.rotation(angle))[0].astype(int)
    theirs = ndimage.rotate(x.astype(np.float32), angle, reshape=False,
                            order=1, mode="constant", cval=0.0)
    theirs = np.clip(np.rint(theirs), 0, 255).astype(int)
    assert np.abs(ours - theirs).max() <= 1, angle


def test_fit_pads_and_crops_about_the_centre():
  x = np.random.default_rng(1).integers(1, 256, (2, 28, 28), np.uint8)
  padded = affine.fit(x, 40)
  assert padded.shape == (2, 40, 40)
  np.testing.assert_array_equal(padded[:, 6:34, 6:34], x)
  assert padded.sum() == x.astype(np.int64).sum()
  np.testing.assert_array_equal(affine.fit(padded, 28), x)
  with pytest.raises(ValueError, match="square"):
    affine.fit(np.zeros((1, 28, 30), np.uint8), 40)
