import time

import pytest
import torch

from citrus_v.model.build import build_model
from citrus_v.model.objectives import forward_and_score, forward_inputs
from citrus_v.model.segmenter import MASK_SIZE


def _run(model, batch):
    return model(**forward_inputs(model, batch, logits=True))



def test_forward_shapes_and_loss_terms(tiny_model, batch, tiny_config):
    out, t = forward_and_score(tiny_model, batch, logits=True)
    terms = t.terms
    B, L = batch["input_ids"].shape
    assert out.logits.shape == (B, L, tiny_config.llm.vocab_size)
    assert out.pred_masks.shape == (3, MASK_SIZE, MASK_SIZE)
    assert out.iou_scores.shape == (3,)
    # untrained: the LM loss is near ln(vocab), BCE near ln 2 on random logits
    assert abs(terms["lm"].item() - torch.log(torch.tensor(4096.0)).item()) < 1.0
    assert 0.5 < terms["mask_bce"].item() / 2.0 < 1.0  # weighted: bce_weight 2 x BCE
    # the tiny preset also teaches SAM's IoU head (LossConfig.iou_weight = 1)
    assert tiny_config.loss.iou_weight == 1.0 and set(terms) == {"lm", "mask_bce", "mask_dice", "mask_iou"}
    expected = terms["lm"] + terms["mask_bce"] + terms["mask_dice"] + terms["mask_iou"]
    torch.testing.assert_close(t.total, expected)


def test_published_loss_has_no_iou_term(batch, tiny_config, seed):
    import dataclasses

    from citrus_v.config import LossConfig

    cfg = dataclasses.replace(tiny_config, loss=LossConfig())  # the 8b's: predicted-IoU pick, no IoU loss
    model = build_model(cfg, seed=seed).eval()
    out, t = forward_and_score(model, batch, logits=True)
    assert set(t.terms) == {"lm", "mask_bce", "mask_dice"} and out.mask_candidates is None
    from citrus_v.model.losses import mask_bce, mask_dice

    torch.testing.assert_close(t.terms["mask_bce"], 2.0 * mask_bce(out.pred_masks, batch["gt_masks"]))  # on the picked mask
    torch.testing.assert_close(t.terms["mask_dice"], 1.0 * mask_dice(out.pred_masks, batch["gt_masks"]))
    torch.testing.assert_close(t.total, t.terms["lm"] + t.terms["mask_bce"] + t.terms["mask_dice"])


def test_same_seed_same_outputs(batch, tiny_config, seed):
    a = _run(build_model(tiny_config, seed=seed).eval(), batch)
    b = _run(build_model(tiny_config, seed=seed).eval(), batch)
    torch.testing.assert_close(a.pred_masks, b.pred_masks, rtol=0, atol=0)
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)


def test_seg_count_mismatch_raises_with_both_counts(tiny_model, batch):
    bad = dict(batch, gt_masks=batch["gt_masks"][:2])
    with pytest.raises(ValueError, match=r"3 \[SEG\] tokens but gt_masks has 2 masks"):
        forward_and_score(tiny_model, bad)
    bad = dict(batch, seg_image_index=batch["seg_image_index"][:2])
    with pytest.raises(ValueError, match=r"3 \[SEG\] tokens but seg_image_index has shape \(2,\)"):
        _run(tiny_model, bad)


def test_masks_come_from_the_seg_hidden_state_of_each_token(tiny_model, batch):
    """Each mask depends only on its own [SEG]'s causal prefix and its own image."""
    with torch.no_grad():
        full = _run(tiny_model, batch)
        # change tokens after row 1's first [SEG]: its mask is unchanged, the second one moves
        seg_cols = (batch["input_ids"][1] == tiny_model.config.tokens.seg_token_id).nonzero().flatten()
        edited = batch["input_ids"].clone()
        edited[1, seg_cols[0] + 1] = 99
        moved = _run(tiny_model, dict(batch, input_ids=edited))
    torch.testing.assert_close(moved.pred_masks[:2], full.pred_masks[:2], rtol=1e-5, atol=1e-5)
    assert (moved.pred_masks[2] - full.pred_masks[2]).abs().max() > 1e-4


def test_image_encoded_once_and_segment_matches_forward(tiny_model, batch, monkeypatch):
    calls = []
    encode = tiny_model.segmenter.encode
    monkeypatch.setattr(tiny_model.segmenter, "encode", lambda x: calls.append(x.shape[0]) or encode(x))
    keys = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "sam_images", "seg_image_index")
    masks, iou = tiny_model.segment(**{k: batch[k] for k in keys})
    assert calls == [2]  # 3 [SEG] over 2 images: one encoder call with 2 images
    with torch.no_grad():
        out = _run(tiny_model, batch)
    torch.testing.assert_close(masks, out.pred_masks)
    torch.testing.assert_close(iou, out.iou_scores)


def test_best_iou_candidate_is_chosen(tiny_model, batch):
    """decode returns, per [SEG], the multimask candidate with the highest predicted IoU."""
    seg = tiny_model.segmenter
    feats = seg.encode(batch["sam_images"])
    prompts = torch.randn(3, 1, 256, generator=torch.Generator().manual_seed(3))
    index = torch.tensor([0, 1, 1])
    with torch.no_grad():
        logits, iou = seg.decode(feats, index, prompts)
        sam2 = seg.sam2
        pts = torch.zeros(3, 1, 1, 2)
        sparse, dense = sam2.prompt_encoder(pts, -torch.ones(3, 1, 1, dtype=torch.long), None, None)
        # SAM2 pads the single empty point with a second: two not-a-point tokens, then [SEG]
        assert sparse.shape == (3, 1, 2, 256)
        torch.testing.assert_close(sparse[0, 0, 0], sam2.prompt_encoder.not_a_point_embed.weight[0])
        sel = feats.select(index)
        all_masks, all_iou, _, _ = sam2.mask_decoder(
            image_embeddings=sel.image_embeddings,
            image_positional_embeddings=sam2.get_image_wide_positional_embeddings().expand(3, -1, -1, -1),
            sparse_prompt_embeddings=torch.cat([sparse, prompts.unsqueeze(1)], dim=2),
            dense_prompt_embeddings=dense,
            multimask_output=True,
            high_resolution_features=sel.high_resolution_features,
        )
    assert all_iou.shape == (3, 1, 3)
    best = all_iou[:, 0].argmax(-1)
    torch.testing.assert_close(iou, all_iou[:, 0].max(-1).values)
    small = all_masks[torch.arange(3), 0, best]  # (3, 64, 64) for the 256 px tiny input
    up = torch.nn.functional.interpolate(small[:, None], size=(256, 256), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(logits, up)


def test_no_seg_tokens_gives_empty_masks_and_lm_loss_only(tiny_model, tiny_config, batch_factory):
    batch = batch_factory(tiny_config, seg_per_row=(0, 0))
    out, t = forward_and_score(tiny_model, batch)
    assert out.pred_masks.shape == (0, 256, 256) and out.seg_states.shape == (0, tiny_config.llm.hidden_size)
    assert set(t.terms) == {"lm"}
    torch.testing.assert_close(t.total, t.terms["lm"])


def test_tiny_train_step_is_fast(tiny_config, batch, seed):
    model = build_model(tiny_config, seed=seed).train()
    forward_and_score(model, batch)[1].total.backward()  # warm-up
    model.zero_grad()
    start = time.perf_counter()
    forward_and_score(model, batch)[1].total.backward()
    elapsed = time.perf_counter() - start
    # ~0.25 s measured on one thread; generous bound for a shared 2-core machine
    assert elapsed < 2.0, f"tiny forward+backward took {elapsed:.2f} s"
    assert model.seg_projector[0].weight.grad is not None
    assert model.segmenter.sam2.vision_encoder.backbone.patch_embed.projection.weight.grad.abs().sum() > 0


def test_generate_is_the_mllm_generate(tiny_model, batch):
    keys = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")
    row = {k: batch[k] for k in keys}
    with torch.no_grad():
        ids = tiny_model.generate(**row, max_new_tokens=4, do_sample=False)
        types = (row["input_ids"] == tiny_model.config.tokens.image_token_id).int()  # M-RoPE needs these
        ref = tiny_model.mllm.generate(**row, mm_token_type_ids=types, max_new_tokens=4, do_sample=False)
    assert ids.shape == (2, batch["input_ids"].shape[1] + 4)
    assert torch.equal(ids, ref)


def test_image_tokens_get_2d_mrope_positions(tiny_model, batch):
    # transformers builds Qwen2.5-VL's 3D rotary positions only when handed mm_token_type_ids;
    # CitrusV supplies them, so its states equal an HF call given the types explicitly
    # and differ from the 1-D fallback HF uses without them.
    args = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
    types = (batch["input_ids"] == tiny_model.config.tokens.image_token_id).int()
    with torch.no_grad():
        ours = tiny_model.hidden_states(**args)
        with_types = tiny_model.mllm.model(**args, mm_token_type_ids=types).last_hidden_state
        flat = tiny_model.mllm.model(**args).last_hidden_state
        positions, _ = tiny_model.mllm.model.get_rope_index(
            args["input_ids"], mm_token_type_ids=types, image_grid_thw=args["image_grid_thw"],
            attention_mask=args["attention_mask"],
        )  # fmt: skip
    torch.testing.assert_close(ours, with_types, rtol=0, atol=0)
    assert not torch.allclose(ours, flat)
    # row 0's 8x8 patch grid -> a 4x4 grid of merged tokens: heights 0..3 and widths 0..3
    img = batch["input_ids"][0] == tiny_model.config.tokens.image_token_id
    h, w = positions[1, 0][img], positions[2, 0][img]
    assert (h - h.min()).tolist() == [r for r in range(4) for _ in range(4)]
    assert (w - w.min()).tolist() == [c for _ in range(4) for c in range(4)]
