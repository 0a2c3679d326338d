"""A whole chat (system text, earlier turns, the last user turn) for the predictor, rendered as the chat template does.

``Predictor.predict(images, prompt)`` takes one user turn under the default system prompt. A
:class:`Conversation` in place of ``prompt`` is rendered turn by turn as Qwen2.5-VL's chat template
(and ms-swift's template for it) renders a message list::

    <|im_start|>system\\n{system}<|im_end|>\\n
    <|im_start|>user\\n{text, with each image where its part stood}<|im_end|>\\n
    <|im_start|>assistant\\n{an earlier answer}<|im_end|>\\n
    <|im_start|>user\\n...<|im_end|>\\n<|im_start|>assistant\\n

A conversation without a system turn gets the template's default system prompt, as a single
prompt does. ``<image>`` marks where each image of the request sits, in order over all user turns
(images of earlier turns included). Only ``[SEG]`` the model writes in THIS answer become masks:
the ``[SEG]`` of an earlier answer is context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from citrus_v.data.schema import IMAGE_PLACEHOLDER, Message

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Conversation:
    """Turns in order: an optional system turn first, then user and assistant turns, the last one a user turn."""

    turns: tuple[Message, ...]

    def __post_init__(self) -> None:
        turns = tuple(self.turns)
        object.__setattr__(self, "turns", turns)
        if not turns or turns[-1].role != "user":
            raise ValueError("Conversation.turns: must end with a user turn (the one the model answers)")
        for i, turn in enumerate(turns):
            if turn.role not in ROLES:
                raise ValueError(f"Conversation.turns[{i}]: role must be one of {list(ROLES)}, got {turn.role!r}")
            if turn.role == "system" and i != 0:
                raise ValueError(f"Conversation.turns[{i}]: a system turn may only come first")
            if turn.role != "user" and IMAGE_PLACEHOLDER in turn.content:
                raise ValueError(f"Conversation.turns[{i}]: images go in user turns, not in a {turn.role} turn")

    @property
    def system(self) -> str | None:
        return self.turns[0].content if self.turns[0].role == "system" else None

    @property
    def last_user_text(self) -> str:
        """The text the model answers, without image markers."""
        return self.turns[-1].content.replace(IMAGE_PLACEHOLDER, "")

    def num_images(self) -> int:
        return sum(t.content.count(IMAGE_PLACEHOLDER) for t in self.turns)

    def user_texts(self) -> list[tuple[int, str]]:
        """(turn index, text) of the system and user turns: what a caller checks for reserved tokens."""
        return [(i, t.content.replace(IMAGE_PLACEHOLDER, "")) for i, t in enumerate(self.turns) if t.role != "assistant"]

    def assistant_texts(self) -> list[tuple[int, str]]:
        return [(i, t.content) for i, t in enumerate(self.turns) if t.role == "assistant"]

    def __str__(self) -> str:
        return self.last_user_text


def conversation_messages(conversation: Conversation, default_system: str | None) -> list[Message]:
    """The turns to render: the default system prompt first when the conversation has none."""
    turns = list(conversation.turns)
    if conversation.system is None and default_system is not None:
        turns.insert(0, Message("system", default_system))
    return turns


def encode_conversation(template, images: Sequence, conversation: Conversation):
    """-> the template's ``Example`` for ``conversation`` ending in ``<|im_start|>assistant\\n`` (labels unused).

    ``images`` are (H, W, 3) uint8 arrays, one per ``<image>`` in the conversation, in order.
    """
    if conversation.num_images() != len(images):
        raise ValueError(f"the conversation has {conversation.num_images()} images but {len(images)} were given")
    msgs = conversation_messages(conversation, template.default_system)
    return template.encode_messages_prompt(msgs, images, "conversation")
