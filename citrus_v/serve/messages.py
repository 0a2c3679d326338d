"""``messages`` of a chat request -> the prompt the predictor answers, the image URLs, and (when the request
has a system message or earlier turns) the whole :class:`~citrus_v.infer.conversation.Conversation`.

Two image part shapes are read: OpenAI's ``{"type": "image_url", "image_url": {"url": ...}}`` and the
Qwen / ms-swift one the published client sends, ``{"type": "image", "image": ...}``. A request of one
user message is answered as before (its images first, its text parts joined by newlines). A request
with a system message or with history is rendered as the chat template renders a message list: the
system text replaces the default system prompt, each turn's parts are joined in order with each image
where its part stood, and earlier answers are context.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from citrus_v.data.schema import IMAGE_PLACEHOLDER, Message
from citrus_v.infer.conversation import Conversation
from citrus_v.serve.errors import RequestError, json_kind
from citrus_v.serve.settings import ServeConfig

ROLES = ("system", "user", "assistant")
IMAGE_PART_TYPES = ("image_url", "image")


@dataclass
class ParsedMessages:
    prompt: str  # the text the model answers: the one user turn's, or the last user turn's
    urls: list[tuple[str, str]] = field(default_factory=list)  # (JSON path, image URL or path), in order
    conversation: Conversation | None = None  # None: one user turn and no system message
    system_text: list[str] = field(default_factory=list)


@dataclass
class _Turn:
    role: str
    parts: list[tuple[str, str, str]]  # ("text", text, path) or ("image", url, path), in order

    def texts(self) -> list[str]:
        return [value for kind, value, _ in self.parts if kind == "text"]

    def urls(self) -> list[tuple[str, str]]:
        return [(where, value) for kind, value, where in self.parts if kind == "image"]


def parse_messages(messages: Any, config: ServeConfig, text_optional: bool = False) -> ParsedMessages:
    """A request's ``messages`` -> :class:`ParsedMessages`, or a :class:`RequestError` naming the field.

    ``text_optional``: point/box prompts alone can make a mask (SAM-style), so the text may be empty.
    """
    turns = _parse_turns(messages, config)
    urls: list[tuple[str, str]] = []
    for i, turn in enumerate(turns):
        urls.extend(turn.urls())
        if len(urls) > config.max_images_per_request:
            raise RequestError(400, f"more than max_images_per_request={config.max_images_per_request} images",
                               f"messages[{i}]", code="too_many_images")
    if len(turns) == 1:
        prompt = "\n".join(t for t in turns[0].texts() if t)
        conversation, system = None, []
    else:
        conversation = _conversation(turns)
        prompt, system = conversation.last_user_text, [conversation.system] if conversation.system is not None else []
    total = sum(len(t) for turn in turns for t in turn.texts())
    if total > config.max_prompt_chars:
        raise RequestError(400, f"prompt has {total} characters, above max_prompt_chars={config.max_prompt_chars}",
                           "messages", code="prompt_too_long")
    if not prompt.strip() and not text_optional and not (conversation is not None and turns[-1].urls()):
        raise RequestError(400, "the user turn has no text prompt", "messages")
    return ParsedMessages(prompt, urls, conversation, system)


def _parse_turns(messages: Any, config: ServeConfig) -> list[_Turn]:
    if messages is None:
        raise RequestError(400, "is required", "messages")
    if not isinstance(messages, list):
        raise RequestError(400, f"must be a list, got {json_kind(messages)}", "messages")
    if not messages:
        raise RequestError(400, "must hold at least one message", "messages")
    if len(messages) > config.max_messages:
        raise RequestError(400, f"{len(messages)} messages, above max_messages={config.max_messages}", "messages")
    turns = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise RequestError(400, f"must be an object, got {json_kind(message)}", where)
        role = message.get("role")
        if role not in ROLES:
            raise RequestError(400, f"role must be one of {list(ROLES)}, got {role!r}", f"{where}.role")
        if role == "system" and i != 0:
            raise RequestError(400, "a system message may only come first (as the chat template renders it)", f"{where}.role")
        turns.append(_Turn(role, _parse_content(message.get("content"), f"{where}.content", allow_images=role == "user")))
    if turns[-1].role != "user":
        raise RequestError(400, f"the last message must be the user turn to answer, got {turns[-1].role!r}",
                           f"messages[{len(turns) - 1}].role")
    if not any(t.texts() or t.urls() for t in turns if t.role == "user"):
        raise RequestError(400, "no user message with text or images", "messages")
    return turns


def _conversation(turns: list[_Turn]) -> Conversation:
    """The turns as the chat template renders them: parts in order, ``<image>`` where an image stood."""
    rendered = []
    for i, turn in enumerate(turns):
        for kind, value, where in turn.parts:
            if kind == "text" and IMAGE_PLACEHOLDER in value:
                raise RequestError(400, f"holds {IMAGE_PLACEHOLDER!r}: with a system message or earlier turns, images are "
                                   "placed by their content parts", where)
        content = "".join(value if kind == "text" else IMAGE_PLACEHOLDER for kind, value, _ in turn.parts)
        rendered.append(Message(turn.role, content))
    return Conversation(tuple(rendered))


def _parse_content(content: Any, where: str, allow_images: bool) -> list[tuple[str, str, str]]:
    if isinstance(content, str):
        return [("text", _check_text(content, where), where)]
    if not isinstance(content, list):
        raise RequestError(400, f"must be a string or a list of parts, got {json_kind(content)}", where)
    parts = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        if not isinstance(part, dict):
            raise RequestError(400, f"must be an object, got {json_kind(part)}", at)
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise RequestError(400, f"must be a string, got {json_kind(text)}", f"{at}.text")
            parts.append(("text", _check_text(text, f"{at}.text"), f"{at}.text"))
        elif kind in IMAGE_PART_TYPES:
            if not allow_images:
                raise RequestError(400, "images are only accepted in user messages", at)
            url, url_at = _image_part_url(part, kind, at)
            parts.append(("image", url, url_at))
        else:
            raise RequestError(400, f"part type must be one of 'text', 'image_url', 'image', got {kind!r}", f"{at}.type")
    return parts


def _image_part_url(part: dict, kind: str, at: str) -> tuple[str, str]:
    """-> (the URL or path, its JSON path). OpenAI's ``image_url`` is ``{"url": ...}``; a bare string is
    what several clients send; Qwen's ``image`` part holds the URL or path itself."""
    value = part.get(kind)
    if kind == "image" or isinstance(value, str):
        url, url_at = value, f"{at}.{kind}"
    else:
        url, url_at = (value.get("url") if isinstance(value, dict) else None), f"{at}.image_url.url"
    if not isinstance(url, str) or not url:
        raise RequestError(400, f"must be a non-empty string, got {json_kind(url)}", url_at)
    return url, url_at


# C0/C1 control characters but tab, newline and carriage return; lone UTF-16 surrogates (valid JSON
# escapes such as "\ud800" that no UTF-8 text can hold)
_BAD_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def _check_text(text: str, where: str) -> str:
    bad = _BAD_CHARS.search(text)
    if bad is not None:
        char = bad.group()
        kind = "an unpaired surrogate" if "\ud800" <= char <= "\udfff" else "the control character"
        raise RequestError(400, f"holds {kind} U+{ord(char):04X} at character {bad.start()}", where, code="invalid_text")
    return text
