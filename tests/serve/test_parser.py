"""Request parsing and image decoding: every bad input is a RequestError with a 4xx naming the field."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from citrus_v.serve.errors import RequestError
from citrus_v.serve.images import decode_image_bytes
from citrus_v.serve.schemas import parse_chat_request
from citrus_v.serve.settings import ServeConfig
from tests.serve.conftest import chat_body, data_url, png_bytes

CONFIG = ServeConfig()
IMG0 = "messages[0].content[0].image_url.url"


def error_of(body, config: ServeConfig = CONFIG) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse_chat_request(body, config)
    return info.value


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, followed by a tiny IDAT: what a bomb looks like up front."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_valid_request_is_parsed_exactly():
    body = chat_body(data_url(png_bytes(32, 48)), "Where is the liver?", max_tokens=20, temperature=0.5, top_p=0.9, seed=3)
    body["messages"].insert(0, {"role": "system", "content": "You are a helpful assistant."})
    req = parse_chat_request(body, CONFIG)
    assert req.prompt == "Where is the liver?"
    assert len(req.images) == 1 and req.images[0].pixels.shape == (32, 48, 3) and req.images[0].pixels.dtype == np.uint8
    assert req.images[0].source_format == "PNG"
    np.testing.assert_array_equal(req.images[0].pixels, np.asarray(Image.open(io.BytesIO(png_bytes(32, 48)))))
    assert (req.sampling.max_tokens, req.sampling.temperature, req.sampling.top_p, req.sampling.seed) == (20, 0.5, 0.9, 3)
    # the system message is honoured: the request becomes a conversation rendered as the chat template does
    assert req.system_text == ["You are a helpful assistant."]
    assert [(t.role, t.content) for t in req.conversation.turns] == [
        ("system", "You are a helpful assistant."), ("user", "<image>Where is the liver?")]


def test_string_content_and_bare_image_url_string_are_accepted():
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": data_url(png_bytes(8, 8))},
                                                      {"type": "text", "text": "hi"}]}]}
    assert parse_chat_request(body, CONFIG).images[0].size == (8, 8)
    req = parse_chat_request({"messages": [{"role": "user", "content": "just text"}]}, CONFIG)
    assert req.prompt == "just text" and req.images == [] and req.sampling.max_tokens == CONFIG.default_max_tokens


@pytest.mark.parametrize(
    "body, status, param, fragment",
    [
        ([1, 2], 400, None, "must be a JSON object, got array"),
        ({}, 400, "messages", "is required"),
        ({"messages": "hi"}, 400, "messages", "must be a list, got string"),
        ({"messages": []}, 400, "messages", "at least one"),
        ({"messages": [5]}, 400, "messages[0]", "must be an object, got number"),
        ({"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role", "role must be one of"),
        ({"messages": [{"role": "user", "content": 7}]}, 400, "messages[0].content", "string or a list"),
        ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, 400, "messages[0].content[0].type", "'audio'"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]}, 400, "messages[0].content[0].text", "got number"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}, {"type": "text", "text": "x"}]}]},
         400, IMG0, "non-empty string"),
        # history is rendered now (tests/serve/test_published_contract.py); a chat must end on the user turn to answer
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, 400, "messages[1].role",
         "last message must be the user turn"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}, {"role": "user", "content": "c"}]},
         400, "messages[1].role", "system message may only come first"),
        ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "<image> here"}]},
         400, "messages[1].content", "placed by their content parts"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "image": 3}]}]}, 400, IMG0.replace("image_url.url", "image"),
         "non-empty string"),
        (chat_body(None, top_k=-1), 400, "top_k", "0 = off"),
        (chat_body(None, repetition_penalty=0), 400, "repetition_penalty", "(0, 10]"),
        ({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]},
         400, "messages[0].content[0]", "only accepted in user messages"),
        ({"messages": [{"role": "user", "content": "  "}]}, 400, "messages", "no text prompt"),
        (chat_body(None, max_tokens="10"), 400, "max_tokens", "must be int, got string"),
        (chat_body(None, max_tokens=True), 400, "max_tokens", "must be int, got boolean"),
        (chat_body(None, max_tokens=0), 400, "max_tokens", "[1, 2048]"),
        (chat_body(None, max_tokens=10**9), 400, "max_tokens", "[1, 2048]"),
        (chat_body(None, temperature="hot"), 400, "temperature", "finite number"),
        (chat_body(None, temperature=float("nan")), 400, "temperature", "finite number"),
        (chat_body(None, temperature=3), 400, "temperature", "[0, 2]"),
        (chat_body(None, top_p=0), 400, "top_p", "(0, 1]"),
        (chat_body(None, n=2), 400, "n", "only n=1"),
        (chat_body(None, stream="yes"), 400, "stream", "must be bool"),
        (chat_body(None, model=3), 400, "model", "must be str"),
        (chat_body(None, text="x" * 9000), 400, "messages", "max_prompt_chars=8000"),
    ],
)
def test_bad_requests_name_the_field(body, status, param, fragment):
    err = error_of(body)
    assert err.status == status
    assert err.param == param
    assert fragment in err.message


def test_too_many_images_rejected_before_decoding():
    # five images of invalid base64: the count is checked first, so the error is about the count
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}] * 5
                          + [{"type": "text", "text": "x"}]}]}
    err = error_of(body)
    assert (err.status, err.code, err.param) == (400, "too_many_images", "messages[0]")


@pytest.mark.parametrize(
    "url, status, code, fragment",
    [
        ("data:image/png;base64,!!!notbase64", 400, "invalid_request", "invalid base64"),
        ("data:image/png;base64,QUJD", 415, "unsupported_image", "not a PNG, JPEG, TIFF or DICOM"),  # "ABC"
        ("data:image/png,rawbytes", 400, "invalid_request", "must be base64"),
        ("data:image/png;base64", 400, "invalid_request", "no ','"),
        ("data:image/png;base64,", 400, "invalid_request", "no bytes"),
        (data_url(png_bytes(40, 40)[:120]), 400, "corrupt_image", "truncated or corrupt"),
        (data_url(png_bytes(40, 40)[:20]), 400, "corrupt_image", "cannot read image header"),
        (data_url(b"\xff\xd8\xff\xe0" + b"\0" * 50, "image/jpeg"), 400, "corrupt_image", ""),
        (data_url(png_header_only(60_000, 60_000)), 413, "image_too_large", ""),  # PIL's own bomb guard
        (data_url(png_header_only(8_000, 8_000)), 413, "image_too_large", "above max_image_pixels=40000000"),
        ("https://example.com/a.png", 400, "invalid_request", "not fetched"),
        ("/etc/passwd", 400, "invalid_request", "allowed_image_dirs"),
        ("file:///etc/passwd", 400, "invalid_request", "allowed_image_dirs"),
        ("gopher://x", 400, "invalid_request", "allowed_image_dirs"),
    ],
)
def test_bad_images_are_4xx(url, status, code, fragment):
    err = error_of(chat_body(url))
    assert (err.status, err.code, err.param) == (status, code, IMG0)
    assert fragment in err.message


def test_real_decompression_bomb_is_refused_before_decoding():
    # 4000 x 4000 one-bit zeros: ~12 kB of PNG that would inflate to 48 MB of RGB
    buf = io.BytesIO()
    Image.new("1", (4000, 4000)).save(buf, format="PNG")
    assert len(buf.getvalue()) < 50_000
    err = error_of(chat_body(data_url(buf.getvalue())), ServeConfig(max_image_pixels=1_000_000))
    assert err.status == 413 and "4000x4000 = 16000000 pixels" in err.message


def test_oversize_payload_is_413_without_decoding():
    err = error_of(chat_body(data_url(png_bytes(64, 64))), ServeConfig(max_image_bytes=1000))
    assert err.status == 413 and "max_image_bytes=1000" in err.message


def test_pil_modes_become_rgb8():
    for mode in ("L", "RGBA", "P", "I;16", "LA", "1"):
        buf = io.BytesIO()
        Image.fromarray(np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)).convert(mode).save(buf, format="PNG")
        img = decode_image_bytes(buf.getvalue(), CONFIG, "x")
        assert img.pixels.shape == (12, 10, 3) and img.pixels.dtype == np.uint8, mode
    buf = io.BytesIO()
    Image.fromarray(np.full((5, 7, 3), 200, dtype=np.uint8)).save(buf, format="JPEG")
    img = decode_image_bytes(buf.getvalue(), CONFIG, "x")
    assert img.source_format == "JPEG" and img.size == (5, 7) and abs(int(img.pixels.mean()) - 200) <= 2


def test_tiff_pages_and_modes(tmp_path):
    rgb = np.arange(12 * 10 * 3, dtype=np.uint8).reshape(12, 10, 3)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="TIFF", compression="tiff_lzw")
    img = decode_image_bytes(buf.getvalue(), CONFIG, "x")
    assert img.source_format == "TIFF" and np.array_equal(img.pixels, rgb)
    buf = io.BytesIO()
    Image.fromarray(np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)).save(buf, format="TIFF")
    grey = decode_image_bytes(buf.getvalue(), CONFIG, "x").pixels  # 16-bit grey stretched min..max
    assert grey[:, :, 0].tolist() == [[0, 64], [128, 255]]
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="TIFF", save_all=True, append_images=[Image.fromarray(rgb)])
    err = error_of_bytes(buf.getvalue())
    assert (err.status, err.param) == (400, "x") and "a TIFF of 2 pages: send one page" in err.message
    err = error_of_bytes(b"II*\x00" + b"\xff" * 40)
    assert (err.status, err.code) == (400, "corrupt_image") and "TIFF" in err.message


def error_of_bytes(data: bytes) -> RequestError:
    with pytest.raises(RequestError) as info:
        decode_image_bytes(data, CONFIG, "x")
    return info.value


def test_allow_list_paths(tmp_path):
    inside = tmp_path / "ok"
    inside.mkdir()
    (inside / "a.png").write_bytes(png_bytes(10, 12))
    (tmp_path / "secret.png").write_bytes(png_bytes(10, 12))
    config = ServeConfig(allowed_image_dirs=[inside])
    assert parse_chat_request(chat_body(str(inside / "a.png")), config).images[0].size == (10, 12)
    assert parse_chat_request(chat_body(f"file://{inside / 'a.png'}"), config).images[0].size == (10, 12)
    err = error_of(chat_body(str(inside / ".." / "secret.png")), config)
    assert err.status == 403 and "outside the allowed directories" in err.message
    (inside / "link.png").symlink_to(tmp_path / "secret.png")
    assert error_of(chat_body(str(inside / "link.png")), config).status == 403
    assert error_of(chat_body(str(inside / "missing.png")), config).status == 400


# ------------------------------------------------------------------------------------------ DICOM
def dicom_bytes(name: str) -> bytes:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.fail(f"pydicom test file {name} is not in the wheel")
    return open(path, "rb").read()


def test_dicom_ct_is_windowed_to_rgb8():
    import pydicom

    data = dicom_bytes("CT_small.dcm")
    img = parse_chat_request(chat_body(data_url(data, "application/dicom")), CONFIG).images[0]
    assert img.source_format == "DICOM" and img.pixels.shape == (128, 128, 3) and img.pixels.dtype == np.uint8
    ds = pydicom.dcmread(io.BytesIO(data))
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    # brighter HU stays brighter: the display is a monotone map of the HU values
    assert img.pixels[..., 0][hu == hu.max()].min() >= img.pixels[..., 0][hu == hu.min()].max()
    assert np.array_equal(img.pixels[..., 0], img.pixels[..., 2])


def test_truncated_dicom_is_400():
    data = dicom_bytes("CT_small.dcm")
    err = error_of(chat_body(data_url(data[: len(data) // 2])))
    assert err.status == 400 and err.param == IMG0


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("JPEG-lossy.dcm", "unsupported DICOM transfer syntax"),  # 12-bit JPEG extended: no installed decoder reads it
        ("SC_rgb_rle_2frame.dcm", "multi-frame"),
        ("empty_charset_LEI.dcm", "no image"),
    ],
)
def test_unsupported_dicom_is_415(name, fragment):
    err = error_of(chat_body(data_url(dicom_bytes(name))))
    assert (err.status, err.code) == (415, "unsupported_dicom")
    assert fragment in err.message


def test_base64_with_line_breaks_is_accepted():
    raw = base64.encodebytes(png_bytes(9, 9)).decode()  # 76-column lines, as MIME writes it
    assert "\n" in raw
    assert parse_chat_request(chat_body("data:image/png;base64," + raw), CONFIG).images[0].size == (9, 9)
