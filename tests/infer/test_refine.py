"""Click / box refinement of one image (infer/refine.py) and the prompt encoding under it (model/prompting.py)."""

import numpy as np
import pytest
import torch

from citrus_v.data.image_processing import sam_preprocess
from citrus_v.infer.refine import check_prompts, refine
from citrus_v.infer.transforms import ImageTransforms
from citrus_v.model.prompting import decode_with_prompts, prompt_embeddings

H, W = 90, 130  # not square: x and y scale differently


@pytest.fixture()
def picture():
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def test_coordinates_map_to_the_stretched_input_and_back():
    xy = np.array([[0, 0], [65, 45], [129.5, 89.5]])
    transforms = ImageTransforms((H, W), 256)
    sam = transforms.to_segmenter(xy)
    np.testing.assert_allclose(sam, [[0, 0], [128, 128], [129.5 * 256 / 130, 89.5 * 256 / 90]])
    np.testing.assert_allclose(transforms.from_segmenter(sam), xy)


def test_prompt_encoder_sees_the_mapped_coordinates(predictor):
    seg = predictor.model.segmenter
    pts = torch.tensor([[128.0, 64.0]])
    sparse, dense = prompt_embeddings(seg, pts, torch.tensor([1]), None, None)
    assert sparse.shape == (1, 1, 2, 256) and dense.shape == (1, 256, 16, 16)  # click + SAM's padding point
    # the click's token is the positional encoding of the pixel centre + the "positive" embedding
    pe = seg.sam2.prompt_encoder.shared_embedding((pts + 0.5).view(1, 1, 1, 2), (256, 256))[0, 0, 0]
    expected = pe + seg.sam2.prompt_encoder.point_embed.weight[1]
    torch.testing.assert_close(sparse[0, 0, 0], expected)


def test_prompts_change_the_sparse_embeddings(predictor):
    seg = predictor.model.segmenter
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


def test_text_only_prompt_matches_the_segmenter_decode(predictor, picture):
    seg = predictor.model.segmenter
    feats = seg.encode(sam_preprocess(picture, 256)[None])
    text = torch.randn(1, 1, 256)
    ref_logits, ref_iou = seg.decode(feats, torch.tensor([0]), text)
    logits, iou = decode_with_prompts(seg, feats, text_embedding=text[0, 0])
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(iou, ref_iou)


def test_refine_with_clicks_and_box(predictor, picture):
    one = refine(predictor, picture, points=[(20, 30, 1)])
    assert len(one.masks) == 1 and one.masks[0].mask.shape == (H, W) and one.masks[0].mask.dtype == bool
    feats = predictor.model.segmenter.encode(sam_preprocess(picture, 256)[None])
    seg = predictor.model.segmenter
    l1, _ = decode_with_prompts(seg, feats, points_sam=torch.tensor([[20.0, 30.0]]), point_labels=torch.tensor([1]))
    l2, _ = decode_with_prompts(seg, feats, points_sam=torch.tensor([[200.0, 30.0]]), point_labels=torch.tensor([1]))
    assert not torch.allclose(l1, l2)  # where you click changes the mask logits
    boxed = predictor.refine(picture, box=[5, 5, 100, 80], points=[(50, 40, 1), (10, 10, 0)])
    assert boxed.masks[0].mask.shape == (H, W)
    fed_back = refine(predictor, picture, points=[(20, 30, 1)], mask_input=one.masks[0].mask)
    assert fed_back.masks[0].mask.shape == (H, W)


def test_refine_joins_the_text_seg_embedding(predictor, scripted, picture):
    scripted("Sure, it is [SEG].")
    with_text = refine(predictor, picture, points=[(20, 30, 1)], prompt="Please segment the liver.")
    assert "[SEG]" in with_text.raw_text and with_text.num_generated_tokens > 0
    alone = refine(predictor, picture, points=[(20, 30, 1)])
    assert with_text.masks[0].score != alone.masks[0].score  # the [SEG] token changed the decoder's input
    scripted("Sure, it is [SEG].")
    with pytest.raises(ValueError, match="seg_index 1 but the answer has 1"):
        refine(predictor, picture, points=[(20, 30, 1)], prompt="Please segment the liver.", seg_index=1)


def test_bad_prompts_name_the_problem():
    with pytest.raises(ValueError, match=r"point 0 \(200, 5\) lies outside the 130x90 image"):
        check_prompts([(200, 5, 1)], None, (H, W))
    with pytest.raises(ValueError, match="label must be 1"):
        check_prompts([(5, 5, 2)], None, (H, W))
    with pytest.raises(ValueError, match="x1 < x2"):
        check_prompts(None, [50, 5, 10, 20], (H, W))
    with pytest.raises(ValueError, match="outside"):
        check_prompts(None, [0, 0, 131, 20], (H, W))


def test_refine_needs_some_prompt(predictor, picture):
    with pytest.raises(ValueError, match="give"):
        refine(predictor, picture)
