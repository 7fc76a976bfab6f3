"""The fixed views' draws and the teacher pass's stream of views.

- `view_draws` is splitmix64 (the published test vector), vectorised: a row's
  draws depend on its own `(seed, view, index)` alone, never on the batch it
  is drawn in; view 0 draws nothing; the values of published views are pinned;
- `views_in_order` yields every view of every example once, in order, one
  view per batch, view 0 the images themselves, each view drawn as a training
  batch draws it;
- `distort` warps as `ImageProjectiveTransformV3` does, bilinearly (a pixel
  shifted by a fraction spreads over its two neighbours by distance), zero
  draws leave an image as it is, and grey and colour images alike.
"""

import numpy as np
import tensorflow as tf

from kd_tf import data, pipelines

# splitmix64 from state 1234567: its first two outputs (Vigna's reference
# implementation, prng.di.unimi.it/splitmix64.c), each the hash of the state
# before the increment.
SPLITMIX_STATES = [1234567, 1234567 + 0x9E3779B97F4A7C15]
SPLITMIX_OUTPUTS = [6457827717110365317, 3203168211198807973]
# The draws of three (seed, view, example): changing them changes every fixed
# view, and so every published student.
PINNED = {
    (0, 1, 0): [0.9191728830337524, -0.902153491973877, 0.9650347232818604, 0.4488463401794433],
    (0, 2, 7): [-0.6132278442382812, -0.0246021747589111, -0.7412974834442139, -0.2556657791137695],
    (3, 1, 0): [-0.05850827693939209, 0.0556875467300415, 0.431454062461853, 0.3976773023605346],
}


def _draws(seed, views, indices):
    return pipelines.view_draws(
        seed, tf.constant(views, tf.int64), tf.constant(indices, tf.int64)
    ).numpy()


class ViewDrawsTest(tf.test.TestCase):
    def test_the_hash_is_splitmix64(self):
        hashed = pipelines._hashed(tf.constant(SPLITMIX_STATES, tf.uint64))
        self.assertEqual(hashed.numpy().tolist(), SPLITMIX_OUTPUTS)

    def test_a_row_depends_on_its_seed_view_and_index_alone(self):
        rng = np.random.default_rng(0)
        views, indices = rng.integers(0, 15, 512), rng.permutation(10**6)[:512]
        batch = _draws(3, views, indices)
        for row in (0, 17, 511):
            alone = _draws(3, views[row : row + 1], indices[row : row + 1])[0]
            self.assertAllEqual(batch[row], alone)
        self.assertAllEqual(batch[views == 0], np.zeros(((views == 0).sum(), 4)))
        for other in (
            _draws(4, views, indices), _draws(3, views, indices + 1), _draws(3, views + 1, indices)
        ):
            self.assertFalse(np.any(np.all(other[views > 0] == batch[views > 0], axis=1)))

    def test_draws_are_uniform_in_minus_one_to_one(self):
        draws = _draws(0, np.ones(5000), np.arange(5000))
        self.assertGreaterEqual(draws.min(), -1.0)
        self.assertLess(draws.max(), 1.0)
        # 20,000 uniform draws: mean 0 and variance 1/3, each within 5 standard errors.
        self.assertAllClose(draws.mean(axis=0), np.zeros(4), atol=5 * np.sqrt(1 / 3 / 5000))
        self.assertAllClose(draws.var(axis=0), np.full(4, 1 / 3), atol=5 * np.sqrt(4 / 45 / 5000))
        self.assertLess(abs(np.corrcoef(draws.T)[0, 1]), 5 / np.sqrt(5000))

    def test_published_draws_are_pinned(self):
        for (seed, view, index), expected in PINNED.items():
            self.assertAllEqual(_draws(seed, [view], [index])[0], np.float32(expected))


def _projective_transform(images, maps):
    """TensorFlow's own bilinear warp of `images` by `maps`
    (`pipelines.inverse_maps`' rows), rounded to uint8 as `distort` does."""
    transforms = tf.concat([maps, tf.zeros([len(images), 2])], axis=1)
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, tf.float32), transforms=transforms,
        output_shape=images.shape[1:3], fill_value=0.0, interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    return pipelines.as_pixels(warped).numpy()


class DistortTest(tf.test.TestCase):
    def test_warps_as_the_projective_transform_op_does(self):
        rng = np.random.default_rng(2)
        for shape in ((256, 28, 28, 1), (64, 32, 24, 3)):
            with self.subTest(shape=shape):
                images = rng.integers(0, 256, shape, np.uint8)
                draws = rng.uniform(-1.0, 1.0, (shape[0], 4)).astype(np.float32)
                expected = _projective_transform(
                    images, pipelines.inverse_maps(draws, shape[1], shape[2])
                )
                differences = np.abs(
                    pipelines.distort(images, draws).numpy().astype(int) - expected
                )
                # Only where float rounding falls differently at a .5.
                self.assertLessEqual(differences.max(), 1)
                self.assertLess(np.count_nonzero(differences), 1e-4 * differences.size)

    def test_a_shift_spreads_a_pixel_over_its_neighbours_by_distance(self):
        image = np.zeros((1, 28, 28, 1), np.uint8)
        image[0, 14, 10] = 255
        # The largest shift right: 8 % of 28 pixels, 2.24. Output pixel 12
        # reads input position 9.76, 13 reads 10.76.
        shifted = pipelines.distort(image, np.array([[0.0, 0.0, 1.0, 0.0]], np.float32))
        expected = np.zeros_like(image)
        expected[0, 14, 12], expected[0, 14, 13] = round(0.76 * 255), round(0.24 * 255)
        self.assertAllEqual(shifted, expected)

    def test_zero_draws_leave_the_images_unchanged(self):
        images = np.random.default_rng(3).integers(0, 256, (8, 28, 28, 3), np.uint8)
        self.assertAllEqual(pipelines.distort(images, np.zeros((8, 4), np.float32)), images)


def _drawn_again(split, seed, batches):
    """The images of each `(views, indices, _)` batch distorted again from the
    split with `seed`, in one tf.data map traced once, as a training batch is
    drawn."""
    batch = tf.TensorSpec((None,), tf.int64)
    requests = tf.data.Dataset.from_generator(
        lambda: ((views, indices) for views, indices, _ in batches),
        output_signature=(batch, batch),
    )
    return requests.map(
        lambda views, indices: pipelines.distort(
            tf.gather(split.images, indices), pipelines.view_draws(seed, views, indices)
        )
    ).as_numpy_iterator()


class ViewsInOrderTest(tf.test.TestCase):
    def test_every_view_of_every_example_once_as_training_draws_it(self):
        rng = np.random.default_rng(1)
        split = data.Split(rng.integers(0, 256, (70, 28, 28, 1), np.uint8), np.zeros(70, np.int64))
        # No views (the images alone), the fewest that distort (2), and more.
        for num_views in (0, 2, 3):
            with self.subTest(num_views=num_views):
                self._assert_views(split, num_views)

    def _assert_views(self, split, num_views):
        passes, seed = max(1, num_views), 5
        batches = list(pipelines.views_in_order(split, num_views, seed, 32).as_numpy_iterator())
        self.assertEqual([len(views) for views, _, _ in batches], [32, 32, 6] * passes)
        drawn_again = _drawn_again(split, seed, batches)
        for (views, _, images), drawn in zip(batches, drawn_again, strict=True):
            self.assertLen(set(views), 1)
            self.assertAllEqual(images, drawn)
        views = np.concatenate([views for views, _, _ in batches])
        indices = np.concatenate([indices for _, indices, _ in batches])
        self.assertAllEqual(views, np.repeat(np.arange(passes), 70))
        self.assertAllEqual(indices, np.tile(np.arange(70), passes))
        self.assertAllEqual(np.concatenate([b[2] for b in batches[:3]]), split.images)
