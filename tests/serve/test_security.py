"""Safe by default on a workstation (issue 22 point 4): Host header, Content-Type, CORS, docs, model name,
allow-list answers that do not reveal whether a file exists."""

from __future__ import annotations

import pytest

from citrus_v.serve.app import create_app
from citrus_v.serve.settings import ServeConfig, host_allowed
from tests.serve.conftest import EchoPredictor, chat_body, data_url, local_client, png_bytes

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools on numpy 2


@pytest.mark.parametrize("bind, extra, host, ok", [
    ("127.0.0.1", [], "127.0.0.1:8000", True),
    ("127.0.0.1", [], "localhost:8000", True),
    ("127.0.0.1", [], "[::1]:8000", True),
    ("127.0.0.1", [], "LOCALHOST", True),
    ("127.0.0.1", [], "evil.example:8000", False),  # a rebound domain
    ("127.0.0.1", [], "192.168.1.5:8000", False),
    ("127.0.0.1", [], "", False),
    ("127.0.0.1", [], "127.0.0.1:notaport", False),
    ("127.0.0.1", ["gpu-box.lan"], "gpu-box.lan:8000", True),
    ("127.0.0.1", ["*"], "anything.example", True),
    ("0.0.0.0", [], "192.168.1.5:8000", True),
    ("0.0.0.0", [], "[fe80::1]:8000", True),
    ("0.0.0.0", [], "evil.example", False),
    ("10.0.0.7", [], "10.0.0.7:8000", True),
    ("10.0.0.7", [], "localhost", False),
])
def test_host_header_must_name_this_server(bind, extra, host, ok):
    assert host_allowed(host, ServeConfig(bind_host=bind, allowed_hosts=extra)) is ok


def test_foreign_host_is_refused_on_every_path():
    with local_client(create_app(EchoPredictor(), ServeConfig())) as c:
        for method, path in [("GET", "/"), ("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/healthz")]:
            r = c.request(method, path, headers={"host": "evil.example:8000"}, json=chat_body(data_url(png_bytes())))
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host", (path, r.text)
        assert c.get("/").status_code == 200  # the same client with Host: 127.0.0.1


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_requests_must_be_json(content_type):
    import json

    headers = {} if content_type is None else {"content-type": content_type}
    with local_client(create_app(EchoPredictor(), ServeConfig())) as c:
        r = c.post("/v1/chat/completions", content=json.dumps(chat_body(data_url(png_bytes()))), headers=headers)
        assert r.status_code == 415 and r.json()["error"]["param"] == "Content-Type"
        ok = c.post("/v1/chat/completions", content=json.dumps(chat_body(data_url(png_bytes()))),
                    headers={"content-type": "application/json; charset=utf-8"})
        assert ok.status_code == 200


def test_no_cors_unless_an_origin_is_given():
    preflight = {"origin": "https://viewer.example", "access-control-request-method": "POST",
                 "access-control-request-headers": "content-type"}
    with local_client(create_app(EchoPredictor(), ServeConfig())) as c:
        r = c.options("/v1/chat/completions", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
        r = c.post("/v1/chat/completions", json=chat_body(data_url(png_bytes())), headers={"origin": "https://viewer.example"})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    with local_client(create_app(EchoPredictor(), ServeConfig(cors_origins=["https://viewer.example"]))) as c:
        r = c.options("/v1/chat/completions", headers=preflight)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://viewer.example"
        other = c.options("/v1/chat/completions", headers={**preflight, "origin": "https://evil.example"})
        assert other.headers.get("access-control-allow-origin") != "https://evil.example"


def test_openapi_only_with_docs():
    with local_client(create_app(EchoPredictor(), ServeConfig())) as c:
        assert c.get("/openapi.json").status_code == 404 and c.get("/docs").status_code == 404
    with local_client(create_app(EchoPredictor(), ServeConfig(docs=True))) as c:
        assert c.get("/openapi.json").status_code == 200 and c.get("/docs").status_code == 200


def test_unknown_model_name_is_404():
    with local_client(create_app(EchoPredictor(), ServeConfig())) as c:
        r = c.post("/v1/chat/completions", json=chat_body(data_url(png_bytes()), model="gpt-4o"))
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        assert "gpt-4o" in r.json()["error"]["message"]
        for name in ["citrus-v-test-double", "citrus-v", "Citrus-V-8B", None]:
            assert c.post("/v1/chat/completions", json=chat_body(data_url(png_bytes()), model=name)).status_code == 200
    with local_client(create_app(EchoPredictor(), ServeConfig(model_aliases=[]))) as c:
        assert c.post("/v1/chat/completions", json=chat_body(data_url(png_bytes()), model="citrus-v")).status_code == 404


def test_allow_list_is_403_outside_whether_or_not_the_file_exists(tmp_path):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (outside / "scan.png").write_bytes(png_bytes())
    (allowed / "scan.png").write_bytes(png_bytes())
    (allowed / "link.png").symlink_to(outside / "scan.png")
    with local_client(create_app(EchoPredictor(), ServeConfig(allowed_image_dirs=[allowed]))) as c:
        answers = {}
        for name, url in [("outside, exists", str(outside / "scan.png")), ("outside, missing", str(outside / "nope.png")),
                          ("outside, missing dir", "/definitely/not/here.png"), ("dotdot", str(allowed / ".." / "outside" / "scan.png")),
                          ("link out", str(allowed / "link.png")), ("relative", "scan.png")]:
            r = c.post("/v1/chat/completions", json=chat_body(url))
            answers[name] = (r.status_code, r.json()["error"]["message"])
        refused = (403, "messages[0].content[0].image_url.url: image path is outside the allowed directories")
        relative = answers.pop("relative")
        assert set(answers.values()) == {refused}, answers
        assert relative == (refused[0], refused[1] + " (a relative path is read from the server's working directory)")
        assert c.post("/v1/chat/completions", json=chat_body(str(allowed / "nope.png"))).status_code == 400
        assert c.post("/v1/chat/completions", json=chat_body(str(allowed / "scan.png"))).status_code == 200
