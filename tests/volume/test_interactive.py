import numpy as np
import pytest
import torch

from citrus_v.data.image_processing import sam_preprocess
from citrus_v.data.volume_io import Volume
from citrus_v.model.prompting import (
    check_prompts,
    decode_with_prompts,
    from_sam_coords,
    prompt_embeddings,
    to_sam_coords,
)
from citrus_v.volume.inference import empty_segmentation
from citrus_v.volume.interactive import refine, refine_volume_slice

H, W = 90, 130  # not square: x and y scale differently


@pytest.fixture()
def picture():
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def test_coordinates_map_to_the_stretched_input_and_back():
    xy = np.array([[0, 0], [65, 45], [129.5, 89.5]])
    sam = to_sam_coords(xy, (H, W), 256)
    np.testing.assert_allclose(sam, [[0, 0], [128, 128], [129.5 * 256 / 130, 89.5 * 256 / 90]])
    np.testing.assert_allclose(from_sam_coords(sam, (H, W), 256), xy)


def test_prompt_encoder_sees_the_mapped_coordinates(tiny_predictor):
    seg = tiny_predictor.model.segmenter
    pts = torch.tensor([[128.0, 64.0]])
    sparse, dense = prompt_embeddings(seg, pts, torch.tensor([1]), None, None)
    assert sparse.shape == (1, 1, 2, 256) and dense.shape == (1, 256, 16, 16)  # click + SAM's padding point
    # the click's token is the positional encoding of the pixel centre + the "positive" embedding
    pe = seg.sam2.prompt_encoder.shared_embedding((pts + 0.5).view(1, 1, 1, 2), (256, 256))[0, 0, 0]
    expected = pe + seg.sam2.prompt_encoder.point_embed.weight[1]
    torch.testing.assert_close(sparse[0, 0, 0], expected)


def test_prompts_change_the_sparse_embeddings(tiny_predictor):
    seg = tiny_predictor.model.segmenter
    a, _ = prompt_embeddings(seg, torch.tensor([[10.0, 20.0]]), torch.tensor([1]), None, None)
    b, _ = prompt_embeddings(seg, torch.tensor([[200.0, 20.0]]), torch.tensor([1]), None, None)
    neg, _ = prompt_embeddings(seg, torch.tensor([[10.0, 20.0]]), torch.tensor([0]), None, None)
    assert not torch.allclose(a, b) and not torch.allclose(a, neg)
    box, _ = prompt_embeddings(seg, None, None, torch.tensor([5.0, 5.0, 100.0, 80.0]), None)
    assert box.shape == (1, 1, 3, 256)  # two corners (labels 2/3) + padding
    both, _ = prompt_embeddings(seg, torch.tensor([[10.0, 20.0]] * 2), torch.tensor([1, 0]), torch.tensor([5.0, 5, 100, 80]), None)
    assert both.shape == (1, 1, 5, 256)  # no extra padding point when a box is present
    text = torch.randn(256)
    with_text, _ = prompt_embeddings(seg, torch.tensor([[10.0, 20.0]]), torch.tensor([1]), None, text)
    assert with_text.shape == (1, 1, 3, 256)
    torch.testing.assert_close(with_text[0, 0, 2], text)  # the [SEG] embedding rides after the clicks
    torch.testing.assert_close(with_text[:, :, :2], a)


def test_text_only_prompt_matches_the_segmenter_decode(tiny_predictor, picture):
    seg = tiny_predictor.model.segmenter
    feats = seg.encode(sam_preprocess(picture, 256)[None])
    text = torch.randn(1, 1, 256)
    ref_logits, ref_iou = seg.decode(feats, torch.tensor([0]), text)
    logits, iou = decode_with_prompts(seg, feats, text_embedding=text[0, 0])
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(iou, ref_iou)


def test_refine_with_clicks_and_box(tiny_predictor, picture):
    one = refine(tiny_predictor, picture, points=[(20, 30, 1)])
    assert len(one.masks) == 1 and one.masks[0].mask.shape == (H, W) and one.masks[0].mask.dtype == bool
    feats = tiny_predictor.model.segmenter.encode(sam_preprocess(picture, 256)[None])
    seg = tiny_predictor.model.segmenter
    l1, _ = decode_with_prompts(seg, feats, points_sam=torch.tensor([[20.0, 30.0]]), point_labels=torch.tensor([1]))
    l2, _ = decode_with_prompts(seg, feats, points_sam=torch.tensor([[200.0, 30.0]]), point_labels=torch.tensor([1]))
    assert not torch.allclose(l1, l2)  # where you click changes the mask logits
    boxed = tiny_predictor.refine(picture, box=[5, 5, 100, 80], points=[(50, 40, 1), (10, 10, 0)])
    assert boxed.masks[0].mask.shape == (H, W)
    fed_back = refine(tiny_predictor, picture, points=[(20, 30, 1)], mask_input=one.masks[0].mask)
    assert fed_back.masks[0].mask.shape == (H, W)


def test_refine_joins_the_text_seg_embedding(tiny_predictor, force_answer, picture):
    force_answer("Sure, it is [SEG].")
    with_text = refine(tiny_predictor, picture, points=[(20, 30, 1)], prompt="Please segment the liver.")
    assert "[SEG]" in with_text.raw_text and with_text.num_generated_tokens > 0
    alone = refine(tiny_predictor, picture, points=[(20, 30, 1)])
    assert with_text.masks[0].score != alone.masks[0].score  # the [SEG] token changed the decoder's input
    force_answer("Sure, it is [SEG].")
    with pytest.raises(ValueError, match="seg_index 1 but the answer has 1"):
        refine(tiny_predictor, picture, points=[(20, 30, 1)], prompt="Please segment the liver.", seg_index=1)


def test_bad_prompts_name_the_problem():
    with pytest.raises(ValueError, match=r"point 0 \(200, 5\) lies outside the 130x90 image"):
        check_prompts([(200, 5, 1)], None, (H, W))
    with pytest.raises(ValueError, match="label must be 1"):
        check_prompts([(5, 5, 2)], None, (H, W))
    with pytest.raises(ValueError, match="x1 < x2"):
        check_prompts(None, [50, 5, 10, 20], (H, W))
    with pytest.raises(ValueError, match="outside"):
        check_prompts(None, [0, 0, 131, 20], (H, W))


def test_refine_needs_some_prompt(tiny_predictor, picture):
    with pytest.raises(ValueError, match="give"):
        refine(tiny_predictor, picture)


def test_refine_volume_slice_touches_only_that_slice(tiny_predictor):
    rng = np.random.default_rng(2)
    vol = Volume(rng.normal(size=(40, 30, 5)).astype(np.float32), np.diag([1.0, 1.0, 2.0, 1.0]), (1, 1, 2), modality="MR")
    seg = empty_segmentation(vol, 2, ["lesion"])
    pred = refine_volume_slice(tiny_predictor, seg, 3, points=[(10, 12, 1)])
    assert pred.masks[0].mask.shape == (30, 40)  # the axial picture is (J, I)
    np.testing.assert_array_equal(seg.slice_mask(0, 3), pred.masks[0].mask)
    assert not seg.masks[0][:, :, [0, 1, 2, 4]].any()
