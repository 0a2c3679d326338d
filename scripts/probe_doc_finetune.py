"""Probe: can a trained model learn to read its lab pages with a local reading target beside the LM loss?

From a model folder (the shipped default by default), the ViT, merger and LLM train on lab pages of the
suite's *train* split (indices past the suite's own records, so none of them is a val or test page). Each
page is one conversation asking all of its analytes in a random order (four answers per image instead of
one; with ``--transcribe`` it opens with the page's transcript), and a linear head on the merged vision
tokens is asked what each token shows: ``--target patches``, which characters have ink in each of its ViT
patches (the local target of scripts/probe_doc_reading.py, with a positive weight: at 1 it learned
precision before recall); ``--target slots``, its characters in reading order
(``document.token_characters``). The head is not part of the model folder written at the end.
``--attend-layer L`` adds the model's copy-attention target (citrus_v.model.copy_attention): head
``--attend-head`` of LLM layer L is shown, for each number character of each answer, the image token
its centre is on (the pages' ``copy_points``); val then also reports how often that head looks there.

Validation is the document records of a suite JSONL (val, never test): exact match read off one
teacher-forced pass (greedy decoding writes the answer exactly iff every answer token, and the closing
<|im_end|>, is the argmax given the ones before it).

    python scripts/probe_doc_finetune.py --val runs/valx/val.jsonl --steps 600 --out runs/docft
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from citrus_v.data.collate import make_collate_fn
from citrus_v.data.dataset import JsonlDataset
from citrus_v.data.phantoms import document
from citrus_v.data.phantoms.suite import SuiteConfig, make_sample, sample_seed, source_of
from citrus_v.data.schema import Message, Record, write_jsonl
from citrus_v.infer.predictor import default_model_dir
from citrus_v.model.objectives import forward_and_score
from citrus_v.train.recipe import batch_to_device
from citrus_v.train.pipeline import init_model_and_template, write_model_folder
from citrus_v.train.stages import get_stage

DIGITS = "0123456789."
PAGE_CHARS = "./0123456789ABCDEGHILOPRSTW^abcdegilmnorstu"  # every character document.render draws but the space
SLOTS = 4  # characters a 28-px token can hold at the page's type size


TRANSCRIBE_Q = "Transcribe the page."


def transcript(page: document.Document) -> str:
    """The page's text in reading order: title, id, then each row as name and value."""
    lines = [text for _, text, _ in page.lines]
    return "\n".join(lines[:2] + [f"{lines[k]} {lines[k + 1]}" for k in range(2, len(lines), 2)])


def make_pages(out: Path, seed: int, start: int, n: int, size: int, patch: int, merge: int, charset: str,
               target: str, transcribe: bool = False, text_page: bool = False, token: int | None = None) -> np.ndarray:
    """Render the first ``n`` lab pages of the suite's train split from index ``start`` on; write each as
    a PNG and a conversation asking all of its values to ``out/pages.jsonl`` (after a transcript of the
    whole page with ``transcribe``; with ``text_page`` the page is given as its transcript in text instead of
    the image). Returns the reading targets:
    (n, T, merge^2, C) for ``patches``, (n, T, SLOTS) for ``slots``. Image pages carry their answers'
    ``copy_points`` (the copy-attention target)."""
    cfg = SuiteConfig(seed=seed, size=size)
    (out / "images").mkdir(parents=True, exist_ok=True)
    records, glyphs = [], []
    index = start
    from PIL import Image

    while len(records) < n:
        index += 1
        if source_of(cfg, "train", index) != "document":
            continue
        page = suite_page(sample_seed(seed, "train", index), size)  # the suite's own page for this index
        path = out / "images" / f"{index:07d}.png"
        Image.fromarray(page.image).save(path)
        order = np.random.default_rng(index).permutation(len(page.values))
        messages, points = document.value_conversation(page, order, image=not transcribe)
        if transcribe:  # the transcript turn shows the image and copies nothing
            messages = [Message("user", "<image>" + TRANSCRIBE_Q), Message("assistant", transcript(page))] + messages
            points = [[]] + points
        if text_page:
            messages[0] = Message("user", messages[0].content.replace("<image>", transcript(page) + "\n"))
        records.append(Record(messages=messages, images=[] if text_page else [str(path.relative_to(out))],
                              task="document", modality="document", meta={} if text_page else {"copy_points": points}))
        glyphs.append(document.patch_characters(document.glyph_labels(page, charset), len(charset), patch, merge) if target == "patches"
                      else document.token_characters(page, charset, token or patch * merge, SLOTS))
    write_jsonl(records, out / "pages.jsonl")
    return np.stack(glyphs)


def suite_val_pages(out: Path, seed: int, n_index: int, size: int) -> Path:
    """The document records among the first ``n_index`` records of the suite's *val* split, as the suite
    writes them (its question, its answer), to ``out/val_pages.jsonl``; the same records as the document
    ones of ``citrus-v data phantoms --n-val n_index``'s val.jsonl, made without the other 90%."""
    from PIL import Image

    cfg = SuiteConfig(seed=seed, size=size)
    (out / "val_images").mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(n_index):
        if source_of(cfg, "val", index) != "document":
            continue
        sample = make_sample(cfg, "val", index)
        path = out / "val_images" / f"{index:07d}.png"
        Image.fromarray(sample.image).save(path)
        records.append(Record(messages=[Message("user", "<image>" + sample.question), Message("assistant", sample.answer)],
                              images=[str(path.relative_to(out))], task="document", modality="document", meta=sample.meta))
    write_jsonl(records, out / "val_pages.jsonl")
    return out / "val_pages.jsonl"


class Indexed(torch.utils.data.Dataset):
    """(index, example) pairs, so a loader's batch can find its pages' reading targets."""

    def __init__(self, dataset: JsonlDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return i, self.dataset[i]


def suite_page(seed: int, size: int = 224) -> document.Document:
    """The suite's lab page for a sample seed (``make_sample``'s first draw for a document record)."""
    return document.render(np.random.default_rng(seed), size, SuiteConfig().rotate_prob)


@torch.no_grad()
def doc_exact(model, dataset, collate, device: torch.device, batch_size: int = 16, read=None,
              slots: torch.Tensor | None = None, only: torch.Tensor | None = None) -> dict[str, float]:
    """Share of answers greedy decoding would write exactly, and of answer tokens argmax-right; with
    ``read`` (merged tokens -> slot logits) and the pages' ``slots``, the share of filled slots read right.
    ``only`` (token ids): score just the answer tokens that are one of these. With the copy-attention target
    on (``model.set_copy_attention``), the share of copied characters whose image token gets its head's most
    attention."""
    model.eval()
    exact = tok_ok = toks = n = slot_ok = filled = 0
    hits = looks = 0
    for s in range(0, len(dataset), batch_size):
        rows = list(range(s, min(s + batch_size, len(dataset))))
        batch = batch_to_device(collate([dataset[i] for i in rows]), device)
        acc = forward_and_score(model, batch)[1].metrics.get("copy_attention_acc")
        if acc is not None:
            hits += float(acc) * len(batch["copy_pairs"])
            looks += len(batch["copy_pairs"])
        if read is not None:
            guess = read().argmax(-1).reshape(len(rows), -1, SLOTS)
            truth = slots[rows]
            slot_ok += int(((guess == truth) & (truth > 0)).sum())
            filled += int((truth > 0).sum())
        pred = out.logits[:, :-1].argmax(-1)
        gold = batch["labels"][:, 1:]
        sup = gold != -100
        if only is not None:
            sup &= torch.isin(gold, only)
        right = (pred == gold) | ~sup
        exact += int(right.all(1).sum())
        tok_ok += int(((pred == gold) & sup).sum())
        toks += int(sup.sum())
        n += len(gold)
    model.train()
    got = {"doc_exact": exact / n, "answer_token_acc": tok_ok / toks, "n": n}
    if filled:
        got["val_slot_acc"] = slot_ok / filled
    if looks:
        got["copy_attention_acc"] = hits / looks
    return got


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--init", type=Path, default=None, help="model folder (default: the embedded default)")
    p.add_argument("--val", type=Path, default=None,
                   help="suite JSONL whose document records are validation (not test); default: made from the "
                        "suite's val split, see --val-index")
    p.add_argument("--val-index", type=int, default=1500, help="without --val: the val split's first N records' pages")
    p.add_argument("--seed", type=int, default=1, help="the suite's seed")
    p.add_argument("--start", type=int, default=100_000, help="train-split index the pages start after")
    p.add_argument("--n-pages", type=int, default=3000)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--vit-mult", type=float, default=1.0, help="lr multiplier of the ViT and merger")
    p.add_argument("--glyph-weight", type=float, default=1.0)
    p.add_argument("--positive-weight", type=float, default=5.0)
    p.add_argument("--charset", choices=["digits", "page"], default="page",
                   help="characters the reading head is asked for: digits and '.', or every one on the page")
    p.add_argument("--target", choices=["patches", "slots"], default="patches",
                   help="which characters have ink in each ViT patch, or each token's characters in reading order")
    p.add_argument("--transcribe", action="store_true", help="each page's conversation starts with its transcript")
    p.add_argument("--text-page", action="store_true",
                   help="control: the page is given as its transcript in text, no image (is the LLM able to look a value up?)")
    p.add_argument("--pixels", type=int, default=None,
                   help="resize pages to this side for the ViT (a multiple of 28; default: the model's own sizing)")
    p.add_argument("--attend-layer", type=int, default=None,
                   help="the copy-attention target: this LLM layer's --attend-head is asked to look at the image token "
                        "holding each number character as the model writes it (citrus_v.model.copy_attention)")
    p.add_argument("--attend-head", type=int, default=0)
    p.add_argument("--attend-weight", type=float, default=1.0)
    p.add_argument("--parts", default="vision_encoder,merger,llm,lm_head", help="the model parts that train")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast there)")
    p.add_argument("--workers", type=int, default=0, help="processes encoding pages beside the training")
    p.add_argument("--eval-only", action="store_true", help="evaluate --init as it is, train nothing")
    p.add_argument("--max-minutes", type=float, default=None, help="stop the training after this long (then evaluate and save)")
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args()

    torch.manual_seed(0)
    t0 = time.time()
    init = args.init or default_model_dir()
    model, tokenizer, template = init_model_and_template(init, "tiny", get_stage(3, "tiny"), [])
    if args.pixels:  # pages resized to pixels x pixels for the ViT (Qwen2.5-VL's dynamic resolution)
        from dataclasses import replace

        from citrus_v.data.template import ChatTemplate

        side = args.pixels * args.pixels
        template = ChatTemplate(tokenizer, replace(template.image_cfg, min_pixels=side, max_pixels=side), max_length=template.max_length)
    if args.pixels and args.target == "patches":
        p.error("--pixels works with --target slots only")
    vis = model.config.vision
    # one merged token covers this many pixels of the 224-px page
    token_px = vis.patch_size * vis.spatial_merge_size * 224 // (args.pixels or 224)
    charset = DIGITS if args.charset == "digits" else PAGE_CHARS
    glyphs = torch.from_numpy(make_pages(args.out, args.seed, args.start, args.n_pages, 224, vis.patch_size,
                                         vis.spatial_merge_size, charset, args.target, args.transcribe,
                                         args.text_page, token_px))
    if args.attend_layer is not None:
        if args.text_page:
            p.error("--attend-layer needs image pages")
        model.set_copy_attention(args.attend_layer, args.attend_head, args.attend_weight)
    print(f"{len(glyphs)} pages in {time.time() - t0:.0f} s", flush=True)
    train = JsonlDataset(args.out / "pages.jsonl", template)
    val_all = JsonlDataset(args.val or suite_val_pages(args.out, args.seed, args.val_index, 224), template)
    val_idx = [i for i, r in enumerate(val_all.records) if r.task == "document"]
    val_pages = [suite_page(val_all.records[i].meta["sample_seed"]) for i in val_idx]  # the pages, for their text and targets
    if args.text_page:  # the same questions, the page as text
        val = [template.encode_record(Record(messages=[
            Message("user", val_all.records[i].messages[0].content.replace("<image>", transcript(page) + "\n")),
            val_all.records[i].messages[1]])) for i, page in zip(val_idx, val_pages)]
    else:  # the val records as the suite writes them now: with their answer's copy points
        val = [template.encode_record(Record(val_all.records[i].messages, val_all.records[i].images, task="document",
                                             meta={"copy_points": [document.copy_points(page, val_all.records[i].messages[1].content)]}),
                                      val_all.path.parent) for i, page in zip(val_idx, val_pages)]
    val_slots = torch.from_numpy(np.stack([document.token_characters(page, charset, token_px, SLOTS)
                                           for page in val_pages])) if args.target == "slots" and not args.text_page else None
    collate = make_collate_fn(template.ids.pad, model.config.tokens.seg_token_id)
    device = torch.device(args.device)
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext
    model.to(device)
    glyphs = glyphs.to(device)

    model.set_trainable(args.parts.split(","))
    model.train()
    merge2, dim = vis.spatial_merge_size ** 2, model.config.llm.hidden_size
    width = merge2 * len(charset) if args.target == "patches" else SLOTS * (len(charset) + 1)
    head = nn.Linear(dim, width).to(device)
    captured: list[torch.Tensor] = []
    model.mllm.model.visual.register_forward_hook(lambda m, i, o: captured.append(o.pooler_output))
    vit = [q for n, q in model.named_parameters() if q.requires_grad and n.startswith("mllm.model.visual.")]
    rest = [q for n, q in model.named_parameters() if q.requires_grad and not n.startswith("mllm.model.visual.")]
    opt = torch.optim.AdamW([{"params": vit, "lr": args.lr * args.vit_mult}, {"params": rest, "lr": args.lr},
                             {"params": head.parameters(), "lr": 1e-3}], weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[args.lr * args.vit_mult, args.lr, 1e-3],
                                                total_steps=args.steps, pct_start=0.05)
    pos_weight = torch.full((len(charset),), args.positive_weight, device=device)
    if val_slots is not None:
        val_slots = val_slots.to(device)

    def read() -> torch.Tensor:  # the head on the tokens of the last forward: (N, SLOTS, C + 1) logits
        return head(F.rms_norm(captured[-1], (dim,))).reshape(-1, SLOTS, len(charset) + 1)

    if args.transcribe:  # the val pages' transcripts, scored on their digits
        digits = torch.tensor([tokenizer.convert_tokens_to_ids(d) for d in "0123456789"], device=device)
        val_text = [template.encode_record(Record(
            messages=[Message("user", "<image>" + TRANSCRIBE_Q), Message("assistant", transcript(page))],
            images=val_all.records[i].images), val_all.path.parent) for i, page in zip(val_idx, val_pages)]

    def evaluate() -> dict[str, float]:
        got = doc_exact(model, val, collate, device, read=read if val_slots is not None else None, slots=val_slots)
        if args.transcribe:
            page = doc_exact(model, val_text, collate, device, only=digits)
            got.update(transcript_digits_all_right=page["doc_exact"], transcript_digit_acc=page["answer_token_acc"])
        return got

    curve = [{"step": 0, **evaluate()}]
    print(curve[-1], flush=True)
    if args.eval_only:
        (args.out / "curve.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                         "curve": curve}, indent=1), encoding="utf-8")
        return
    loader = torch.utils.data.DataLoader(
        Indexed(train), batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=args.workers,
        collate_fn=lambda items: (torch.tensor([i for i, _ in items]), collate([e for _, e in items])),
        generator=torch.Generator().manual_seed(0), persistent_workers=args.workers > 0)
    batches = iter(loader)
    lm_hist, gl_hist, at_hist = [], [], []
    t_train = time.time()
    for step in range(1, args.steps + 1):
        try:
            idx, batch = next(batches)
        except StopIteration:  # a new epoch over the pages
            batches = iter(loader)
            idx, batch = next(batches)
        idx, batch = idx.to(device), batch_to_device(batch, device)
        captured.clear()
        with amp():
            _, out = forward_and_score(model, batch)
            logits = head(F.rms_norm(captured[0], (dim,))).float() if captured else None
        if logits is None:  # no image in the batch (--text-page)
            gl = torch.zeros((), device=device)
        elif args.target == "patches":
            gl = F.binary_cross_entropy_with_logits(logits.reshape(len(idx), -1, merge2, len(charset)), glyphs[idx],
                                                    pos_weight=pos_weight)
        else:
            gl = F.cross_entropy(logits.reshape(-1, len(charset) + 1), glyphs[idx].reshape(-1))
        loss = out.total + args.glyph_weight * gl  # the total has the weighted copy-attention term when it is on
        if "copy_attention" in out.terms:
            at_hist.append(float(out.terms["copy_attention"].detach()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([q for g in opt.param_groups for q in g["params"]], 1.0)
        opt.step()
        sched.step()
        lm_hist.append(float(out.terms["lm"].detach()))
        gl_hist.append(float(gl.detach()))
        if step % 20 == 0:
            look = f" attend {np.mean(at_hist[-20:]):.4f}" if at_hist else ""
            print(f"step {step} lm {np.mean(lm_hist[-20:]):.4f} glyph {np.mean(gl_hist[-20:]):.4f}{look} {time.time() - t0:.0f} s", flush=True)
        stop = args.max_minutes is not None and time.time() - t_train > 60 * args.max_minutes
        if step % args.eval_every == 0 or step == args.steps or stop:
            curve.append({"step": step, "lm_loss_last20": float(np.mean(lm_hist[-20:])),
                          "glyph_loss_last20": float(np.mean(gl_hist[-20:])),
                          **({"attend_loss_last20": float(np.mean(at_hist[-20:]))} if at_hist else {}), **evaluate(),
                          "seconds": round(time.time() - t0)})
            print(curve[-1], flush=True)
            (args.out / "curve.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                             "curve": curve}, indent=1), encoding="utf-8")
        if stop:
            print(f"stopped at step {step} of {args.steps}: --max-minutes {args.max_minutes}", flush=True)
            break
    write_model_folder(model, tokenizer, args.out / "final", template.image_cfg)
    torch.save(head.state_dict(), args.out / "reading_head.pt")


if __name__ == "__main__":
    main()
