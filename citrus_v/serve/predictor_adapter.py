"""The real model behind the server: :class:`citrus_v.infer.predictor.Predictor` as a ``BatchPredictor``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from citrus_v.infer.types import Prediction
from citrus_v.serve.prompts import PromptSpec
from citrus_v.serve.schemas import SamplingParams


def to_generation_settings(sampling: SamplingParams, base=None):
    """OpenAI knobs over the model's defaults ``base`` (a ``GenerationSettings``: its folder's
    generation_config.json, else greedy) -> the predictor's settings. What the request leaves unset
    (None) keeps the default; ``temperature == 0`` is greedy, as OpenAI; > 0 samples at it."""
    from dataclasses import replace

    from citrus_v.infer.generation import GenerationSettings
    from citrus_v.infer.generation_config import merge_settings

    settings = merge_settings(
        replace(base or GenerationSettings(), fast=False), max_new_tokens=sampling.max_tokens,
        temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
        repetition_penalty=sampling.repetition_penalty,
    )
    return replace(settings, seed=sampling.seed)  # a seed is the request's own


SESSIONS_KEPT = 4  # images whose segmenter features the server keeps (SAM2-L: ~16 MB each in fp32)


class PredictorAdapter:
    """Holds the ONE model instance; the batch worker calls it from one thread at a time.

    The viewer sends the image again with every click: the sessions of the last few images
    (``citrus_v.infer.session.SessionCache``) let an answer and the clicks after it share one
    image-encoder pass.
    """

    def __init__(self, predictor, model_name: str):
        from citrus_v.infer.session import SessionCache

        self.predictor = predictor
        self.model_name = model_name
        self.defaults = predictor.settings  # the model's generation defaults; each request's knobs go over them
        self.sessions = SessionCache(predictor.image_session, SESSIONS_KEPT)

    def predict_batch(self, items: Sequence[tuple[list[np.ndarray], str]], settings: SamplingParams) -> list[Prediction]:
        # a request's first image is the one its [SEG]s segment and its boxes are on
        try:
            requests = [([self.sessions.get(images[0]), *images[1:]] if images else images, text) for images, text in items]
            return self.predictor.predict_batch(requests, settings=self.generation_settings(settings))
        finally:
            self.sessions.release_pixels()  # the requests' pixels are charged to them only while they run

    def predict_stream(self, images: list[np.ndarray], text, settings: SamplingParams, on_text) -> Prediction:
        """One request, its answer's text handed to ``on_text`` piece by piece while it is generated."""
        from citrus_v.infer.streaming import TokenStreamer

        request = ([self.sessions.get(images[0]), *images[1:]] if images else images, text)
        streamer = TokenStreamer(self.predictor.tokenizer, on_text)
        return self.predictor.predict_batch([request], settings=self.generation_settings(settings), streamer=streamer)[0]

    def generation_settings(self, sampling: SamplingParams):
        """The request's settings over the model's defaults (``Predictor.settings``)."""
        return to_generation_settings(sampling, self.defaults)

    @property
    def max_context_tokens(self) -> int | None:
        """The model's context (max_position_embeddings): the server's default ``max_tokens`` limit."""
        llm = getattr(getattr(getattr(self.predictor, "model", None), "config", None), "llm", None)
        value = getattr(llm, "max_position_embeddings", None)
        return value if isinstance(value, int) else None

    def check_conversation(self, conversation, where: str) -> None:
        """ValueError naming a reserved token in a turn of a conversation (see ``Predictor.check_conversation``)."""
        self.predictor.check_conversation(conversation, where)

    def check_prompt(self, prompt: str, where: str) -> None:
        """ValueError naming a reserved token string ([SEG], <|vision_start|>...) in the prompt."""
        self.predictor.check_prompt(prompt, where)

    def check_image_size(self, height: int, width: int, where: str) -> None:
        """ValueError when the model cannot take an image of this size (aspect ratio over 200)."""
        self.predictor.check_image_size(height, width, where)

    def refine(self, image: np.ndarray, text: str, prompts: PromptSpec, settings: SamplingParams) -> Prediction:
        """Point/box prompts (and the text, if any) on one image -> ``Predictor.refine``'s one mask."""
        # refine decodes with predictor.settings; swapping them is safe: the batch worker is the only caller
        previous = self.predictor.settings
        self.predictor.settings = self.generation_settings(settings)
        try:
            return self.predictor.refine(self.sessions.get(image), prompt=text if text.strip() else None, **prompts.refine_kwargs())
        finally:
            self.predictor.settings = previous
            self.sessions.release_pixels()

    def predict_tiled(self, image: np.ndarray, text: str, tiles, settings: SamplingParams) -> Prediction:
        """``"tiles"``: the prompt on each tile of one large image, stitched (``Predictor.predict_tiled``).
        The tiles are encoded on their own, so the session cache is not used."""
        return self.predictor.predict_tiled(image, text, tiles, settings=self.generation_settings(settings))


def load_predictor(model_dir: Path | str | None) -> PredictorAdapter:
    from citrus_v.infer.predictor import Predictor

    predictor = Predictor.from_pretrained(model_dir)
    name = "citrus-v-default" if model_dir is None else f"citrus-v-{Path(model_dir).resolve().name}"
    return PredictorAdapter(predictor, name)
