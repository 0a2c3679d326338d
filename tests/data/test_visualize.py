"""visualize.outline: the truth's edges drawn, the pixels inside and outside left as they were."""

from __future__ import annotations

import numpy as np
import pytest

from citrus_v.data.visualize import outline

RED = (255, 0, 0)


def test_outline_draws_only_the_masks_inner_edge():
    image = np.full((10, 10, 3), 7, np.uint8)
    mask = np.zeros((10, 10), bool)
    mask[2:8, 2:8] = True  # 6 x 6: an edge of 20 pixels around a 4 x 4 inside
    out = outline(image, masks=[mask], color=RED)
    edge = (out == RED).all(axis=-1)
    assert edge.sum() == 20 and not edge[3:7, 3:7].any() and not edge[~mask].any()
    assert (out[~edge] == 7).all() and (image == 7).all()  # the input is not changed
    thick = (outline(image, masks=[mask], color=RED, width=2) == RED).all(axis=-1)
    assert thick.sum() == 36 - 4  # only the 2 x 2 centre is left


def test_a_mask_on_the_image_border_gets_its_edge_there():
    image = np.zeros((6, 6, 3), np.uint8)
    full = np.ones((6, 6), bool)
    edge = (outline(image, masks=[full], color=RED) == RED).all(axis=-1)
    assert edge.sum() == 20 and not edge[1:5, 1:5].any()


def test_outline_draws_boxes_and_rejects_bad_input():
    image = np.zeros((20, 20, 3), np.uint8)
    out = outline(image, boxes=[[4, 5, 14, 15]], color=RED)
    drawn = (out == RED).all(axis=-1)
    assert drawn[5, 4:15].all() and drawn[15, 4:15].all() and drawn[5:16, 4].all() and not drawn[10, 9]
    with pytest.raises(ValueError, match="mask 0 has shape"):
        outline(image, masks=[np.ones((4, 4), bool)])
    with pytest.raises(ValueError, match="uint8"):
        outline(image.astype(np.float32))
    with pytest.raises(ValueError, match="width"):
        outline(image, width=0)
