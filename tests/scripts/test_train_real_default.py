"""scripts/train_real_default.py without training: pack never reads test and keeps boxes right when it
shrinks images, thinning keeps whole images, mix counts, blank images, and the per-source scores and pick."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.scripts.conftest import load_script

@pytest.fixture(scope="module")
def script():
    yield from load_script("train_real_default")


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _suite(root: Path) -> Path:
    """A real-suite folder: bccd (a 400 x 200 image with one pixel box) and cvc-clinicdb (3 frames with
    masks, each a segment and a locate record); every test.jsonl is garbage, so reading it fails."""
    (root / "bccd" / "images").mkdir(parents=True)
    Image.new("RGB", (400, 200), (200, 10, 10)).save(root / "bccd" / "images" / "b.jpg")
    box = {"messages": [{"role": "user", "content": "<image>Please locate the white blood cell."},
                        {"role": "assistant", "content": "<boxes>"}], "images": ["images/b.jpg"], "task": "detection",
           "objects": {"ref": ["white blood cell"], "bbox": [[100.0, 50.0, 300.0, 150.0]]}, "meta": {"source": "bccd"}}
    for split in ("train", "val"):
        _write(root / "bccd" / f"{split}.jsonl", [box])
    cvc = root / "cvc-clinicdb"
    (cvc / "images").mkdir(parents=True)
    rows = []
    for k in range(3):
        Image.fromarray(np.full((64, 64, 3), 40 * k, np.uint8)).save(cvc / "images" / f"f{k}.png")
        mask = np.zeros((64, 64), np.uint8)
        mask[10:30, 20:40] = 255
        Image.fromarray(mask).save(cvc / "images" / f"f{k}_m.png")
        seg = {"messages": [{"role": "user", "content": "<image>Please segment the polyp."},
                            {"role": "assistant", "content": "Sure, it is [SEG]."}], "images": [f"images/f{k}.png"],
               "masks": [f"images/f{k}_m.png"], "task": "segmentation", "meta": {"source": "cvc-clinicdb"}}
        rows += [seg, {**seg, "masks": [], "task": "detection"}]
    for split in ("train", "val"):
        _write(cvc / f"{split}.jsonl", rows)
    for source in ("bccd", "cvc-clinicdb"):
        (root / source / "test.jsonl").write_text("not json: the pack must never read me\n")
    return root


def test_pack_shrinks_images_keeps_boxes_as_fractions_and_never_reads_test(script, tmp_path: Path):
    real, out = _suite(tmp_path / "real"), tmp_path / "pack"
    counts = script.pack(real, out, max_side=100, quality=90, thin={"cvc-clinicdb": 2})
    assert counts == {"bccd/train": 1, "bccd/val": 1, "cvc-clinicdb/train": 4, "cvc-clinicdb/val": 6}
    (rec,) = script.read(out / "bccd_train.jsonl")
    with Image.open(out / rec["images"][0]) as im:
        assert im.size == (100, 50) and im.format == "JPEG"
    assert rec["objects"]["bbox_type"] == "norm1" and rec["objects"]["bbox"] == [[0.25, 0.25, 0.75, 0.75]]
    train = script.read(out / "cvc-clinicdb_train.jsonl")
    assert sorted({Path(r["images"][0]).stem for r in train}) == ["f0", "f2"]  # whole images: both records of each
    seg = next(r for r in train if r["task"] == "segmentation")
    with Image.open(out / seg["masks"][0]) as m, Image.open(out / seg["images"][0]) as im:
        assert m.size == im.size == (64, 64) and set(np.unique(np.asarray(m))) <= {0, 255}  # not larger: kept


def test_mix_balances_repeats_and_adds_the_synthetic_slice(script, tmp_path: Path):
    real, pack, synth = _suite(tmp_path / "real"), tmp_path / "pack", tmp_path / "synth"
    script.pack(real, pack, max_side=0, quality=90, thin={})
    synth.mkdir()
    one = {"messages": [{"role": "user", "content": "<image>q"}, {"role": "assistant", "content": "a"}],
           "images": ["x.png"], "task": "caption"}
    _write(synth / "train.jsonl", [one] * 10)
    _write(synth / "val.jsonl", [one] * 5)
    counts = script.mix(pack, synth, tmp_path / "mix", n_synthetic=4, n_synthetic_val=2, seed=0)
    assert counts == {"cvc-clinicdb": 6, "bccd": 1, "synthetic": 4, "train": 11, "val_real": 7}
    train = script.read(tmp_path / "mix" / "train.jsonl")
    assert len(train) == 11 and all(Path(p).is_absolute() for r in train for p in r["images"])
    assert len(script.read(tmp_path / "mix" / "val_synthetic.jsonl")) == 2
    again = script.mix(pack, synth, tmp_path / "mix3", n_synthetic=0, n_synthetic_val=2, seed=0,
                       repeat={"cvc-clinicdb": 3, "bccd": 0})
    assert again == {"cvc-clinicdb": 18, "bccd": 0, "synthetic": 0, "train": 18, "val_real": 7}


def test_mix_repeat_names_a_malformed_item_in_one_line(script):
    for bad in ("drve=1", "drive", "drive=x"):
        with pytest.raises(SystemExit) as e:
            script.main(["mix", "--pack", "p", "--synthetic", "s", "--out", "o", "--repeat", bad])
        assert repr(bad) in str(e.value) and "SOURCE=N" in str(e.value)


def test_scores_per_source_and_pick(script, tmp_path: Path):
    data = tmp_path / "val.jsonl"
    _write(data, [{"meta": {"source": "vqa-rad"}}, {"meta": {"source": "vqa-rad"}}, {"meta": {"source": "cvc-clinicdb"}}])
    runs = []
    for name, correct, dice in (("a", 1.0, 0.4), ("b", 0.0, 0.9)):
        run = tmp_path / name / "eval_val"
        run.mkdir(parents=True)
        _write(run / "predictions.jsonl", [
            {"index": 0, "task": "vqa_closed", "scores": {"correct": correct}, "dice": []},
            {"index": 1, "task": "vqa_open", "scores": {"recall": 0.35}, "dice": []},
            {"index": 2, "task": "segmentation", "scores": {}, "dice": [dice, dice]}])
        runs.append(run)
    table = script.scores(data, runs[0])
    assert table == {"vqa-rad": {"closed_acc": (1.0, 1), "open_recall": (0.35, 1)}, "cvc-clinicdb": {"dice": (0.4, 2)}}
    # a: closed 1/0.7 capped 1.25, open 1.0, dice 0.5 -> 0.917; b: 0, 1.0, 1.125 -> 0.708
    assert script.score_of(table) == pytest.approx((1.25 + 1.0 + 0.5) / 3)
    marks = script.print_table(data, runs)
    assert marks[0] > marks[1]
    other = tmp_path / "other.jsonl"  # an eval of one file read against another
    _write(other, [{"meta": {"source": "vqa-rad"}}] * 2)
    with pytest.raises(SystemExit, match=r"eval_val: 3 predictions for the 2 records of .*other.jsonl: not an eval of"):
        script.scores(other, runs[0])
    script.main(["table", "--data", str(data), *map(str, runs), "--json", str(tmp_path / "t.json")])
    written = json.loads((tmp_path / "t.json").read_text())
    assert written[str(runs[1])]["cvc-clinicdb"]["dice"] == [0.9, 2]


def test_scores_keep_bccd_platelets_apart_from_the_white_cells(script, tmp_path: Path):
    data = tmp_path / "val.jsonl"
    _write(data, [{"messages": [{"role": "user", "content": f"<image>Please locate the {what}."}], "meta": {"source": "bccd"}}
                  for what in ("white blood cell", "platelets", "white blood cell")])
    run = tmp_path / "eval_val"
    run.mkdir()
    _write(run / "predictions.jsonl", [
        {"index": i, "task": "detection", "scores": {"p50_hit": hit, "p50_text_hit": hit}, "dice": []}
        for i, hit in enumerate((1.0, 0.0, 0.0))])
    table = script.scores(data, run)
    assert table["bccd"]["p50_text"] == (0.5, 2)  # the bar's question only
    assert table["bccd platelets"]["p50_text"] == (0.0, 1)


def test_blank_writes_the_same_records_on_black_images_of_the_same_size(script, tmp_path: Path):
    suite = _suite(tmp_path / "real")
    assert script.main(["blank", "--data", str(suite / "bccd" / "val.jsonl"), "--out", str(tmp_path / "blank")]) is None
    (rec,) = script.read(tmp_path / "blank" / "data.jsonl")
    (original,) = script.read(suite / "bccd" / "val.jsonl")
    assert {k: v for k, v in rec.items() if k != "images"} == {k: v for k, v in original.items() if k != "images"}
    with Image.open(rec["images"][0]) as im:
        assert im.size == (400, 200) and not np.asarray(im).any()
    with pytest.raises(SystemExit, match="blank: .*test.jsonl: Expecting value: line 1"):
        script.main(["blank", "--data", str(suite / "bccd" / "test.jsonl"), "--out", str(tmp_path / "b2")])


def test_soup_interpolates_every_weight_and_keeps_the_base_files(script, tmp_path: Path):
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    base, tuned = tmp_path / "base", tmp_path / "tuned"
    for folder, w in ((base, 0.0), (tuned, 1.0)):
        folder.mkdir()
        save_file({"w": torch.full((2, 2), w, dtype=torch.float16), "n": torch.tensor([3])},
                  folder / "model.safetensors", metadata={"format": "pt", "layout": "x"})
    (base / "config.json").write_text("{}")
    out = script.soup(base, tuned, 0.7, tmp_path / "soup")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt", "layout": "x"}
        w, n = f.get_tensor("w"), f.get_tensor("n")
    assert w.dtype == torch.float16 and torch.allclose(w.float(), torch.full((2, 2), 0.7), atol=1e-3)
    assert n.tolist() == [3] and (out / "config.json").is_file()
    with pytest.raises(SystemExit, match="alpha"):
        script.soup(base, tuned, 1.5, tmp_path / "bad")
    with pytest.raises(SystemExit, match="no model.safetensors"):
        script.soup(base, tmp_path / "missing", 0.5, tmp_path / "bad")


def test_graft_adds_the_fine_tune_s_change_to_the_mllm_weights_only(script, tmp_path: Path):
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    folders = {}
    for name, m, s in (("onto", 5.0, 7.0), ("base", 1.0, 0.0), ("tuned", 3.0, 9.0)):  # m: an MLLM weight, s: a segmenter one
        folders[name] = tmp_path / name
        folders[name].mkdir()
        save_file({"mllm.model.w": torch.full((2,), m, dtype=torch.float16), "segmenter.w": torch.full((2,), s),
                   "mllm.model.n": torch.tensor([4])}, folders[name] / "model.safetensors", metadata={"format": "pt"})
    (folders["onto"] / "config.json").write_text("{}")
    out = script.graft(folders["onto"], folders["base"], folders["tuned"], 0.5, tmp_path / "g")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        mllm, seg, n = f.get_tensor("mllm.model.w"), f.get_tensor("segmenter.w"), f.get_tensor("mllm.model.n")
    assert mllm.dtype == torch.float16 and mllm.tolist() == [6.0, 6.0]  # 5 + 0.5 * (3 - 1)
    assert seg.tolist() == [7.0, 7.0] and n.tolist() == [4]  # the segmenter and integer tensors stay --onto's
    assert (out / "config.json").is_file()
    with pytest.raises(SystemExit, match="graft: no weight of .* is named vision."):
        script.graft(folders["onto"], folders["base"], folders["tuned"], 1.0, tmp_path / "bad", prefix="vision.")
    save_file({"mllm.model.w": torch.zeros(2)}, folders["base"] / "model.safetensors")
    with pytest.raises(SystemExit, match="graft: --base's weights are not --onto's \\(2 names differ\\)"):
        script.graft(folders["onto"], folders["base"], folders["tuned"], 1.0, tmp_path / "bad")


def test_vocab_gives_real_words_tokens_and_leaves_the_default_s_answers_unchanged(script, tmp_path: Path):
    """The extended default: old ids and rows untouched, each new row the mean of its pieces' rows, and
    (the point of the mean) the same greedy answers to synthetic questions, [SEG] mask included."""
    from safetensors.torch import load_file

    from citrus_v.data.phantoms.suite import SuiteConfig, make_sample
    from citrus_v.data.tokenizer import load_tokenizer
    from citrus_v.infer.predictor import Predictor, default_model_dir

    real = tmp_path / "real.jsonl"
    qa = [("Is there evidence of a pneumothorax?", "No"), ("Is there cardiomegaly?", "Yes, there is cardiomegaly"),
          ("Where is the pneumoperitoneum?", "Under the right hemidiaphragm")]
    _write(real, [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], "task": "vqa_open"}
                  for q, a in qa * 2])
    base = default_model_dir()
    info = script.vocab(base, [real], [], tmp_path / "ext", None, 2, keep_synthetic=100)
    old_tok, new_tok = load_tokenizer(base), load_tokenizer(tmp_path / "ext")
    assert info["tokens_before"] == len(old_tok) < info["tokens_after"] == len(new_tok) <= info["embedding_rows"]
    assert "Ġcardiomegaly" in new_tok.get_vocab()
    a, b = load_file(base / "model.safetensors"), load_file(tmp_path / "ext" / "model.safetensors")
    n = len(old_tok)
    for name in ("mllm.lm_head.weight", "mllm.model.language_model.embed_tokens.weight"):
        assert torch_equal(a[name][:n], b[name][:n]) and torch_equal(a[name][len(new_tok):], b[name][len(new_tok):])
        new_id = new_tok.convert_tokens_to_ids("Ġcardiomegaly")
        pieces = old_tok.encode(" cardiomegaly", add_special_tokens=False)
        assert len(pieces) > 1
        expected = a[name][pieces].float().mean(0)
        assert (b[name][new_id].float() - expected).abs().max() < 1e-2  # fp16 storage
    assert all(torch_equal(a[k], b[k]) for k in a if "lm_head" not in k and "embed_tokens" not in k)
    sample = make_sample(SuiteConfig(seed=3, size=224), "val", 0)
    old, new = Predictor.from_pretrained(base), Predictor.from_pretrained(tmp_path / "ext")
    for prompt in (sample.question, "Please segment the liver."):
        p, q = old.predict(sample.image, prompt), new.predict(sample.image, prompt)
        assert p.raw_text == q.raw_text and p.num_prompt_tokens == q.num_prompt_tokens, prompt
        assert len(p.masks) == len(q.masks) and all((m.mask == k.mask).all() for m, k in zip(p.masks, q.masks))
    assert "[SEG]" in p.raw_text and p.masks  # the segment prompt checked a mask, not only text


def torch_equal(x, y) -> bool:
    import torch

    return x.shape == y.shape and bool(torch.equal(x, y))


def test_vocab_names_a_bad_texts_file_and_its_line_in_one_line(script, tmp_path: Path, capsys):
    from citrus_v.infer.predictor import default_model_dir

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\nnot json\n')
    with pytest.raises(SystemExit, match=r"bad\.jsonl:(1|2)"):
        script.main(["vocab", "--base", str(default_model_dir()), "--texts", str(bad), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="missing.jsonl"):
        script.main(["vocab", "--base", str(default_model_dir()), "--texts", str(tmp_path / "missing.jsonl"),
                     "--out", str(tmp_path / "o")])
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "model.safetensors").write_bytes(b"")
    (tmp_path / "big" / "config.json").write_text('{"name": "8b"}')
    with pytest.raises(SystemExit, match="tiny-preset"):
        script.vocab(tmp_path / "big", [bad], [], tmp_path / "o", None, 2)
    assert not (tmp_path / "o").exists()


def _eval_dir(path: Path, predictions: list[dict] | None = None, **metrics: float) -> Path:
    """A ``citrus-v eval`` folder: eval.json with ``metrics`` and, when given, predictions.jsonl."""
    path.mkdir(parents=True)
    (path / "eval.json").write_text(json.dumps({m: {"value": v, "n": 10} for m, v in metrics.items()}))
    if predictions is not None:
        _write(path / "predictions.jsonl", predictions)
    return path


def _real_eval(path: Path, closed: list[float], totalseg_dice: float) -> Path:
    """A real-val eval on the 4-record file of ``test_judge_*``: three VQA-RAD closed answers, one CT slice."""
    rows = [{"index": i, "task": "vqa_closed", "scores": {"correct": c}, "dice": []} for i, c in enumerate(closed)]
    rows.append({"index": 3, "task": "segmentation", "scores": {}, "dice": [totalseg_dice]})
    return _eval_dir(path, rows)


SYNTHETIC_OK = {"seg_dice_mean": 0.85, "vqa_closed_acc": 0.92, "report_rougeL": 0.9, "doc_exact": 0.83}


def _judge_data(tmp_path: Path) -> Path:
    """The real val file of ``test_judge_*``: three VQA-RAD questions, one TotalSegmentator slice."""
    data = tmp_path / "val.jsonl"
    _write(data, [{"meta": {"source": "vqa-rad"}}] * 3 + [{"meta": {"source": "totalseg"}}])
    return data


def test_judge_passes_a_candidate_only_when_every_check_of_the_rule_holds(script, tmp_path: Path, capsys):
    data = _judge_data(tmp_path)
    shipped = (_real_eval(tmp_path / "d_real", [0.0, 0.0, 1.0], 0.77),
               _eval_dir(tmp_path / "d_syn", **SYNTHETIC_OK, det_p50_text=0.60))
    # closed 2/3 = 0.667 >= 0.333 + 0.15, black 0.5 + 0.08 <= 0.667, boxes 0.56 >= 0.60 - 0.05, CT 0.80 >= 0.762
    good = (_real_eval(tmp_path / "c_real", [1.0, 1.0, 0.0], 0.80), _eval_dir(tmp_path / "c_black", vqa_closed_acc=0.5),
            _eval_dir(tmp_path / "c_syn", **SYNTHETIC_OK, det_p50_text=0.56))
    checks = script.judge(data, shipped, good)
    assert len(checks) == 9 and all(c["passed"] for c in checks)
    args = ["judge", "--data", str(data), "--shipped", *map(str, shipped), "--json", str(tmp_path / "j.json")]
    script.main([*args, "--candidate", *map(str, good)])
    assert "9 of 9 checks pass" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "j.json").read_text())) == 9

    # the same answers whether the image is there or black, and boxes 0.06 below the shipped model's: two fail
    bad = (good[0], _eval_dir(tmp_path / "b_black", vqa_closed_acc=0.667),
           _eval_dir(tmp_path / "b_syn", **SYNTHETIC_OK, det_p50_text=0.54))
    failed = {c["check"] for c in script.judge(data, shipped, bad) if not c["passed"]}
    assert failed == {"VQA-RAD closed, 0.08 above black images", "synthetic written box P@0.5 (shipped - 0.05)"}
    with pytest.raises(SystemExit) as e:
        script.main([*args, "--candidate", *map(str, bad)])
    assert e.value.code == 1
    assert "7 of 9 checks pass; fails:" in capsys.readouterr().out


def test_judge_names_the_eval_folder_that_lacks_a_metric(script, tmp_path: Path):
    data = _judge_data(tmp_path)
    real = _real_eval(tmp_path / "real", [1.0, 0.0, 0.0], 0.8)
    syn = _eval_dir(tmp_path / "syn", **SYNTHETIC_OK)  # no det_p50_text: not a synthetic eval with boxes
    black = _eval_dir(tmp_path / "black", vqa_closed_acc=0.2)
    with pytest.raises(SystemExit, match=r"judge: .*syn/eval.json: no value for 'det_p50_text'"):
        script.judge(data, (real, syn), (real, black, syn))
    nulls = _eval_dir(tmp_path / "nulls", **{**SYNTHETIC_OK, "doc_exact": None}, det_p50_text=0.5)  # no document scored
    with pytest.raises(SystemExit, match=r"judge: .*nulls/eval.json: no value for 'doc_exact'"):
        script.judge(data, (real, nulls), (real, black, nulls))
    syn2 = _eval_dir(tmp_path / "syn2", **SYNTHETIC_OK, det_p50_text=0.5)
    with pytest.raises(SystemExit, match=r"judge: .*never_ran/eval.json: .*No such file"):  # a folder eval never wrote
        script.judge(data, (real, syn2), (real, tmp_path / "never_ran", syn2))


def _seg_eval(path: Path, dice: list[float], answers: list[str], **metrics: float) -> Path:
    """An eval folder on ``_seg_judge_data``'s five mask records (one per source), answering ``answers``."""
    rows = [{"index": i, "task": "segmentation", "scores": {}, "dice": [d], "answer": a}
            for i, (d, a) in enumerate(zip(dice, answers))]
    return _eval_dir(path, rows, **metrics)


def test_judge_seg_wants_the_shipped_answers_better_masks_and_the_tightened_boxes_kept(script, tmp_path: Path, capsys):
    data = tmp_path / "val.jsonl"
    _write(data, [{"meta": {"source": s}} for s in (*script.MASK_SOURCES, "totalseg")])
    said = ["Sure, it is [SEG]."] * 5
    shipped = (_seg_eval(tmp_path / "d_real", [0.6, 0.9, 0.5, 0.2, 0.77], said),
               _seg_eval(tmp_path / "d_syn", [0.9] * 5, said, seg_dice_mean=0.9, det_p50=0.80))
    # every mask source at or above the shipped Dice, CT 0.77 >= 0.762, tightened boxes 0.76 >= 0.80 - 0.05
    good = (_seg_eval(tmp_path / "c_real", [0.7, 0.9, 0.6, 0.5, 0.77], said),
            _seg_eval(tmp_path / "c_syn", [0.9] * 5, said, seg_dice_mean=0.85, det_p50=0.76))
    checks = script.judge_segmenter(data, shipped, good)
    assert len(checks) == 9 and all(c["passed"] for c in checks)
    args = ["judge-seg", "--data", str(data), "--shipped", *map(str, shipped)]
    script.main([*args, "--candidate", *map(str, good)])
    assert "9 of 9 checks pass" in capsys.readouterr().out

    # one answer changed (the MLLM is not the shipped one), vessels below the shipped Dice, boxes 0.06 lower
    bad = (_seg_eval(tmp_path / "b_real", [0.7, 0.9, 0.6, 0.1, 0.77], said[:4] + ["large"]),
           _seg_eval(tmp_path / "b_syn", [0.9] * 5, said, seg_dice_mean=0.85, det_p50=0.74))
    failed = {c["check"] for c in script.judge_segmenter(data, shipped, bad) if not c["passed"]}
    assert failed == {"answers equal to the shipped model's", "drive Dice (not below shipped)",
                      "synthetic tightened box P@0.5 (shipped - 0.05)"}
    with pytest.raises(SystemExit) as e:
        script.main([*args, "--candidate", *map(str, bad)])
    assert e.value.code == 1 and "6 of 9 checks pass; fails:" in capsys.readouterr().out

    short = _seg_eval(tmp_path / "short", [0.9] * 4, said[:4], seg_dice_mean=0.85, det_p50=0.76)
    with pytest.raises(SystemExit, match=r"judge-seg: 4 predictions against 5 in .*d_syn"):
        script.judge_segmenter(data, shipped, (good[0], short))
    with pytest.raises(SystemExit, match=r"judge-seg: .*never_ran/predictions.jsonl"):
        script.judge_segmenter(data, shipped, (tmp_path / "never_ran", good[1]))
