"""MNIST-Scenes v1 follows DESIGN.md section 3."""

import numpy as np
import pytest

from models.image.data import (
    CELL_ORIGINS,
    JITTER,
    MASK_THRESHOLD,
    make_scenes,
    mnist_digits,
    pool_indices,
)


def test_pools_split_by_index_mod_5_and_do_not_overlap():
    test, train = pool_indices("test"), pool_indices("train")
    assert len(test) == 1000 and len(train) == 4000
    assert (test % 5 == 0).all() and (train % 5 != 0).all()
    assert not set(test) & set(train)
    with pytest.raises(ValueError, match="unknown pool"):
        pool_indices("val")


def test_deterministic_for_a_seed():
    a, b, c = make_scenes(50, "train", 7), make_scenes(50, "train", 7), make_scenes(50, "train", 8)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.segment, b.segment)
    assert not np.array_equal(a.images, c.images)


@pytest.mark.parametrize("pool", ["train", "test"])
def test_scenes_use_only_their_pool(pool):
    scenes = make_scenes(300, pool, 1)
    used = scenes.digits[scenes.digits >= 0]
    assert set(used) <= set(pool_indices(pool))


def test_labels_cells_jitter_and_mask_follow_the_spec():
    images, labels = mnist_digits()
    scenes = make_scenes(400, "test", 3)
    counts = np.bincount(scenes.count, minlength=3)
    assert (counts > 90).all()  # n in {1, 2, 3}, uniform
    for i in range(len(scenes.images)):
        used = scenes.digits[i][scenes.digits[i] >= 0]
        digit_labels = labels[used]
        assert scenes.count[i] == len(used) - 1
        assert scenes.sum[i] == digit_labels.sum()
        assert set(np.flatnonzero(scenes.presence[i])) == set(digit_labels)
        # each digit appears, unchanged, at one cell origin shifted by a jitter in [-3, 3]
        for d in used:
            assert _find_placement(scenes.images[i], images[d]) is not None
        # mask: exactly the pixels where some digit is >= the threshold, labelled 1 + digit
        fg = scenes.segment[i] > 0
        assert set(np.unique(scenes.segment[i][fg]) - 1) <= set(digit_labels)
        assert (scenes.images[i][fg] >= MASK_THRESHOLD).all()
        assert not ((scenes.images[i] >= MASK_THRESHOLD) & ~fg).any()


def _find_placement(canvas: np.ndarray, digit: np.ndarray):
    """A cell origin + jitter where the canvas is >= the digit everywhere it lands (the
    part of the digit clipped off the canvas is at most three rows or columns)."""
    for r0, c0 in CELL_ORIGINS:
        for dy in range(-JITTER, JITTER + 1):
            for dx in range(-JITTER, JITTER + 1):
                r, c = r0 + dy, c0 + dx
                rs, cs = slice(max(r, 0), min(r + 28, 56)), slice(max(c, 0), min(c + 28, 56))
                patch = digit[rs.start - r : rs.stop - r, cs.start - c : cs.stop - c]
                if (canvas[rs, cs] >= patch).all() and (patch > 0).sum() >= 0.75 * (digit > 0).sum():
                    return r, c
    return None


def test_overlap_mask_goes_to_the_brighter_digit():
    from models.image.data import paste

    canvas = np.zeros((56, 56), np.uint8)
    owner = np.zeros((56, 56), np.uint8)
    mask = np.zeros((56, 56), np.int64)
    a = np.full((28, 28), 200, np.uint8)
    b = np.full((28, 28), 250, np.uint8)
    paste(canvas, owner, mask, a, 3, 0, 0)
    paste(canvas, owner, mask, b, 7, 2, 2)
    assert mask[1, 1] == 1 + 3 and mask[5, 5] == 1 + 7 and canvas[5, 5] == 250
    paste(canvas, owner, mask, a, 1, 4, 4)  # dimmer digit on top does not take the pixel
    assert mask[10, 10] == 1 + 7
