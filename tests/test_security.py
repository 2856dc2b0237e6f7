"""Security against the live server: API key, CORS origins, Host names (DNS rebinding), request
body limit, message count limit, /metrics behind the key."""

import time

import httpx
import ollama
import openai
import pytest

from server.cli import serve_parser
from server.config import Settings, load_settings
from server.plumbing.middleware import allowed_hosts, origin_regex
from tests.scripts import JAPANESE_ANSWER

KEY = "sk-local-test-key"
ALLOWED = "https://app.example.com"
CHAT = {"messages": [{"role": "user", "content": "What is 2+2?"}]}


@pytest.fixture(scope="module")
def keyed_server(start_server, scripted_model):
    """A key from the environment, origins from the command line, a 1 MiB body limit, 3 messages
    a request at most, /metrics behind the key."""
    server = start_server(
        ["--model", str(scripted_model), "--trust-remote-code", "--served-model-name", "scripted",
         "--cors-origins", f"{ALLOWED},http://intranet:*"],
        env={"SWALLOW_API_KEY": KEY, "SWALLOW_ALLOWED_HOSTS": "intranet, *.example.lan", "SWALLOW_MAX_BODY_MB": "1", "SWALLOW_MAX_MESSAGES": "3",
             "SWALLOW_METRICS_PUBLIC": "false"},
    )
    yield server
    server.stop()


def assert_error(response, status: int, code=None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code
    return error


def auth(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


# ---- API key ----------------------------------------------------------------------------

@pytest.mark.parametrize("method, path", [
    ("GET", "/v1/models"), ("GET", "/v1/models/scripted"), ("POST", "/v1/chat/completions"),
    ("POST", "/v1/responses"), ("GET", "/v1/responses/resp_123"), ("DELETE", "/v1/responses/resp_123"),
    ("GET", "/v1/responses/resp_123/input_items"), ("GET", "/metrics"),
])
def test_every_v1_route_wants_the_key(keyed_server, method, path):
    url = keyed_server.url + path
    body = {"json": CHAT} if method == "POST" else {}
    missing = httpx.request(method, url, timeout=10, **body)
    assert_error(missing, 401)
    assert missing.headers["www-authenticate"] == "Bearer"
    assert_error(httpx.request(method, url, headers=auth("wrong"), timeout=10, **body), 401, "invalid_api_key")
    assert_error(httpx.request(method, url, headers={"Authorization": f"Basic {KEY}"}, timeout=10, **body), 401)
    assert_error(httpx.request(method, url, headers={"Authorization": KEY}, timeout=10, **body), 401)


def test_the_right_key_is_served_and_health_is_open(keyed_server):
    assert httpx.get(f"{keyed_server.url}/health").status_code == 200
    assert httpx.get(f"{keyed_server.url}/v1/models", headers=auth()).json()["data"][0]["id"] == "scripted"
    lower = httpx.get(f"{keyed_server.url}/v1/models", headers={"authorization": f"bearer {KEY}"})
    assert lower.status_code == 200
    client = openai.OpenAI(base_url=f"{keyed_server.url}/v1", api_key=KEY, max_retries=0)
    assert client.chat.completions.create(model="scripted", **CHAT).choices[0].message.content == JAPANESE_ANSWER


def test_sdk_with_a_wrong_key_gets_authentication_error(keyed_server):
    client = openai.OpenAI(base_url=f"{keyed_server.url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.models.list()
    assert caught.value.status_code == 401


def test_anthropic_clients_send_the_key_as_x_api_key(keyed_server):
    import anthropic

    claude = anthropic.Anthropic(base_url=keyed_server.url, api_key=KEY, max_retries=0)
    reply = claude.messages.create(model="claude-opus-4-8", max_tokens=100, messages=CHAT["messages"])
    assert reply.content[-1].text == JAPANESE_ANSWER
    with pytest.raises(anthropic.AuthenticationError) as caught:
        anthropic.Anthropic(base_url=keyed_server.url, api_key="nope", max_retries=0).messages.create(
            model="m", max_tokens=10, messages=CHAT["messages"])
    assert caught.value.body == {"type": "error", "error": {"type": "authentication_error",
                                                            "message": "Incorrect API key provided."}}


def test_key_and_limits_from_flags_and_environment(monkeypatch):
    args = serve_parser().parse_args(["--api-key", "from-flag", "--max-concurrency", "3", "--max-queue", "0",
                                      "--cors-origins", "*"])
    overrides = {k: v for k, v in vars(args).items() if k != "config"}
    settings = load_settings(None, overrides)
    assert (settings.api_key, settings.max_concurrency, settings.max_queue) == ("from-flag", 3, 0)
    assert settings.cors_origins == ["*"] and origin_regex(settings.cors_origins) is None
    monkeypatch.setenv("SWALLOW_API_KEY", "from-env")
    monkeypatch.setenv("SWALLOW_CORS_ORIGINS", "https://a.example, http://b.example:*")
    settings = load_settings(None, {})
    assert settings.api_key == "from-env"
    assert settings.cors_origins == ["https://a.example", "http://b.example:*"]
    assert Settings().api_key == "" and Settings().max_body_mb == 16


# ---- CORS -------------------------------------------------------------------------------

def preflight(server, origin: str) -> httpx.Response:
    return httpx.options(f"{server.url}/v1/chat/completions", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})


@pytest.mark.parametrize("origin", ["http://localhost:5173", "http://localhost", "http://127.0.0.1:8080",
                                    "https://127.0.0.1:3000", "http://[::1]:9000"])
def test_default_origins_are_this_machines_pages(scripted_server, origin):
    allowed = preflight(scripted_server, origin)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == origin
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    reply = httpx.post(f"{scripted_server.url}/v1/chat/completions", json=CHAT, headers={"Origin": origin}, timeout=60)
    assert reply.status_code == 200 and reply.headers["access-control-allow-origin"] == origin


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://localhost.evil.example",
                                    "http://127.0.0.1.evil.example:8000", "http://192.168.1.20:8000"])
def test_other_origins_are_refused_by_default(scripted_server, origin):
    assert preflight(scripted_server, origin).status_code == 400
    assert "access-control-allow-origin" not in preflight(scripted_server, origin).headers
    # a browser's "simple" request still reaches the server: it must not run
    refused = httpx.post(f"{scripted_server.url}/v1/chat/completions", json=CHAT, headers={"Origin": origin})
    assert_error(refused, 403, "origin_not_allowed")
    assert "access-control-allow-origin" not in refused.headers
    # clients that are not browsers send no Origin at all
    assert httpx.get(f"{scripted_server.url}/v1/models").status_code == 200


def test_configured_origins_replace_the_default(keyed_server):
    for origin in (ALLOWED, "http://intranet:8080", "http://intranet"):
        assert preflight(keyed_server, origin).headers.get("access-control-allow-origin") == origin, origin
    for origin in ("http://localhost:3000", "https://app.example.com.evil.example", "http://app.example.com"):
        assert preflight(keyed_server, origin).status_code == 400, origin
        assert_error(httpx.get(f"{keyed_server.url}/v1/models", headers={"Origin": origin, **auth()}), 403)
    ok = httpx.get(f"{keyed_server.url}/v1/models", headers={"Origin": ALLOWED, **auth()})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == ALLOWED
    assert "x-request-id" in ok.headers["access-control-expose-headers"].lower()
    # a page from an allowed origin can read why its request failed
    unauthorized = httpx.get(f"{keyed_server.url}/v1/models", headers={"Origin": ALLOWED})
    assert_error(unauthorized, 401)
    assert unauthorized.headers["access-control-allow-origin"] == ALLOWED


# ---- Host names (DNS rebinding) -----------------------------------------------------------

REBOUND = {"Host": "attacker.example.com"}  # a page whose name was made to resolve to 127.0.0.1


@pytest.mark.parametrize("method, path", [("GET", "/v1/models"), ("GET", "/"), ("GET", "/status.json"),
                                          ("GET", "/health"), ("POST", "/v1/chat/completions")])
def test_a_foreign_host_name_is_refused_on_a_loopback_server(scripted_server, method, path):
    refused = httpx.request(method, scripted_server.url + path, headers=REBOUND, timeout=10,
                            **({"json": CHAT} if method == "POST" else {}))
    error = assert_error(refused, 403, "host_not_allowed")
    assert "'attacker.example.com'" in error["message"] and "allowed_hosts" in error["message"]


def test_loopback_names_are_served_on_any_port(scripted_server):
    port = scripted_server.port
    for host in ("localhost", f"localhost:{port}", "127.0.0.1", f"127.0.0.1:{port}", "[::1]", f"[::1]:{port}",
                 "LOCALHOST:1"):
        assert httpx.get(f"{scripted_server.url}/v1/models", headers={"Host": host}).status_code == 200, host


def test_the_messages_api_refuses_a_foreign_host_in_its_own_shape(scripted_server):
    import anthropic

    client = anthropic.Anthropic(base_url=scripted_server.url, api_key="x", max_retries=0,
                                 default_headers=REBOUND)
    with pytest.raises(anthropic.PermissionDeniedError) as refused:
        client.messages.create(model="scripted", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert refused.value.body["error"]["type"] == "permission_error"
    assert "allowed_hosts" in refused.value.body["error"]["message"]


def test_allowed_hosts_adds_names(keyed_server):
    for host in ("intranet", "intranet:8000", "box.example.lan", "a.b.example.lan:1", "localhost"):
        assert httpx.get(f"{keyed_server.url}/v1/models", headers={"Host": host, **auth()}).status_code == 200, host
    for host in ("example.lan", "intranet.evil.example", "evilexample.lan", "attacker.example.com"):
        assert_error(httpx.get(f"{keyed_server.url}/v1/models", headers={"Host": host, **auth()}), 403,
                     "host_not_allowed")


@pytest.mark.parametrize("listen, hosts, checked", [
    ("127.0.0.1", [], []), ("localhost", [], []), ("::1", ["box.lan"], ["box.lan"]),
    ("0.0.0.0", [], None), ("0.0.0.0", ["box.lan"], ["box.lan"]), ("127.0.0.1", ["*"], None),
    ("192.168.1.20", [], None)])
def test_the_host_check_is_on_when_listening_on_loopback_or_when_names_are_given(listen, hosts, checked):
    assert allowed_hosts(Settings(host=listen, allowed_hosts=hosts)) == checked


def test_allowed_hosts_from_the_environment_and_bad_names(monkeypatch):
    monkeypatch.setenv("SWALLOW_ALLOWED_HOSTS", "Box.LAN, 10.0.0.2,[fe80::1]")
    assert load_settings(None).allowed_hosts == ["box.lan", "10.0.0.2", "[fe80::1]"]
    with pytest.raises(Exception, match="not a host name"):
        Settings(allowed_hosts=["http://box.lan"])


# ---- request body limit ------------------------------------------------------------------

def padded(size: int) -> bytes:
    """A JSON chat request of about `size` bytes (padding in an ignored field)."""
    return b'{"messages": [], "padding": "' + b"x" * size + b'"}'


def test_body_over_the_configured_limit_is_413(keyed_server):
    url = f"{keyed_server.url}/v1/chat/completions"
    headers = {"content-type": "application/json", **auth()}
    assert_error(httpx.post(url, content=padded(3 * 2**19), headers=headers, timeout=30), 413, "request_too_large")

    def chunks():  # no Content-Length: counted while reading
        body = padded(3 * 2**19)
        for i in range(0, len(body), 2**16):
            yield body[i:i + 2**16]

    assert_error(httpx.post(url, content=chunks(), headers=headers, timeout=30), 413, "request_too_large")
    # under the limit it gets to validation: no messages is a 400
    assert_error(httpx.post(url, content=padded(2**19), headers=headers, timeout=30), 400)
    # the key is checked before a body is read
    assert_error(httpx.post(url, content=padded(3 * 2**19), headers={"content-type": "application/json"}), 401)
    assert httpx.get(f"{keyed_server.url}/health").status_code == 200


def test_default_limit_is_16_mib(scripted_server):
    url = f"{scripted_server.url}/v1/chat/completions"
    headers = {"content-type": "application/json"}
    error = assert_error(httpx.post(url, content=padded(16 * 2**20 + 10), headers=headers, timeout=60), 413)
    assert "16 MiB" in error["message"]
    assert_error(httpx.post(url, content=padded(15 * 2**20), headers=headers, timeout=60), 400)


# ---- /metrics -----------------------------------------------------------------------------

def test_metrics_are_public_by_default_and_can_want_the_key(scripted_server, keyed_server):
    assert "swallow_http_requests_total" in httpx.get(f"{scripted_server.url}/metrics").text
    assert_error(httpx.get(f"{keyed_server.url}/metrics"), 401)  # metrics_public = false
    keyed = httpx.get(f"{keyed_server.url}/metrics", headers=auth())
    assert keyed.status_code == 200 and "swallow_http_requests_total" in keyed.text
    assert httpx.get(f"{keyed_server.url}/health").status_code == 200


# ---- message count limit -------------------------------------------------------------------

@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}] * 100_000}),
    ("/v1/responses", {"input": [{"role": "user", "content": "a"}] * 100_000}),
    ("/v1/messages", {"messages": [{"role": "user", "content": "a"}] * 100_000, "max_tokens": 8}),
    ("/v1/messages/count_tokens", {"messages": [{"role": "user", "content": "a"}] * 100_000}),
])
def test_a_hundred_thousand_tiny_messages_are_a_fast_400(scripted_server, path, body):
    started = time.perf_counter()
    reply = httpx.post(f"{scripted_server.url}{path}", json=body, timeout=60)
    elapsed = time.perf_counter() - started
    assert reply.status_code == 400, reply.text[:300]
    error = reply.json()["error"]
    assert "100000 items" in error["message"] and "at most 10000" in error["message"]
    assert "max_messages" in error["message"]
    assert elapsed < 5, elapsed  # parsed and refused; nothing rendered (~0.3 s here)


def test_max_messages_is_configurable_and_counts_a_stored_conversation(keyed_server):
    client = openai.OpenAI(base_url=f"{keyed_server.url}/v1", api_key=KEY, max_retries=0)
    four = [{"role": "user", "content": "hi"}] * 4
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m", messages=four)
    assert caught.value.body["param"] == "messages" and "at most 3" in caught.value.body["message"]
    first = client.responses.create(model="m", input="What is 2+2?")  # stored: input, reasoning, answer
    assert len(first.output) == 2
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="m", input="And 3+3?", previous_response_id=first.id)
    assert caught.value.body["code"] == "too_many_messages" and caught.value.body["param"] == "input"
    assert "4 items" in caught.value.body["message"]


# ---- Ollama's API (/api) is guarded like /v1 ----------------------------------------------

def test_ollamas_api_wants_the_key_and_a_local_origin(keyed_server, scripted_server):
    missing = httpx.post(f"{keyed_server.url}/api/chat", json={**CHAT, "stream": False}, timeout=10)
    assert missing.status_code == 401 and list(missing.json()) == ["error"]  # Ollama's error shape
    with pytest.raises(ollama.ResponseError) as refused:
        ollama.Client(host=keyed_server.url).list()
    assert refused.value.status_code == 401
    keyed = ollama.Client(host=keyed_server.url, headers=auth())
    assert keyed.chat(model="scripted", messages=CHAT["messages"]).message.content == JAPANESE_ANSWER
    evil = httpx.post(f"{scripted_server.url}/api/chat", json=CHAT, headers={"Origin": "https://evil.example"})
    assert evil.status_code == 403 and "cors_origins" in evil.json()["error"]
