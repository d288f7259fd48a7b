"""A real HTTP server on 127.0.0.1 that speaks enough of the chat-completions protocol for
the ``openai`` client, and can be scripted per class name to misbehave.

    with FakeLLM() as fake:
        fake.script("tabby cat", "429", "good")      # first request 429, then a good answer
        fake.script("lynx", "malformed", "malformed", "malformed")
        client = openai.OpenAI(base_url=fake.url, api_key="x")

Behaviours (one is consumed per request for that class; when a class's script is used up
it answers ``fake.default``):

``good``        200, a JSON answer with 5 class-specific items (key from the request)
``prose``       200, a good answer wrapped in prose and a ```json fence
``malformed``   200, content that is not valid JSON
``empty``       200, ``{"descriptors": []}``
``name_only``   200, the class name as the only item
``short``       200, a single usable item
``not_completion`` 200, a body that is not a chat.completion
``429`` / ``500`` / ``503``  that status, with ``retry-after-ms`` so the client retries fast
``stall``       sleeps ``stall_s`` (past the client's timeout), then answers well
``400``         400 (a request error that is not about response_format)

Server-wide switches: ``reject_json_schema`` (400 on every ``json_schema`` request, as
servers without strict schemas do), ``reject_json_object``, ``require_key`` (401 for any
other bearer token, echoing the token in the message, as careless servers do),
``echo_credentials`` (a hostile or careless server: every credential the request carried --
the Authorization header and its token, any header named like a key, Basic-auth user and
password, the query string -- is quoted back in the answer's items, in an extra ``echo``
field of the response body and in the ``x-echo`` response header; ``seen_credentials``
collects them, so a test knows they really reached the server).

The class of a request is found by looking for the known class names (everything
scripted, plus ``fake.known``) in the last user message; the longest match wins.
"""
from __future__ import annotations

import json
import re
import threading
import time
from collections import defaultdict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GOOD_FEATURES = ["{n} shaped outline", "distinctive {n} texture", "typical {n} colour pattern", "a {n} sized body", "parts seen on every {n}"]


class FakeLLM:
    def __init__(self, default: str = "good", stall_s: float = 1.0, reject_json_schema: bool = False,
                 reject_json_object: bool = False, require_key: str | None = None, known=(),
                 echo_credentials: bool = False):
        self.default = default
        self.stall_s = stall_s
        self.reject_json_schema = reject_json_schema
        self.reject_json_object = reject_json_object
        self.require_key = require_key
        self.echo_credentials = echo_credentials
        self.seen_credentials: set[str] = set()
        self.known: set[str] = {k.lower() for k in known}
        self.scripts: dict[str, deque] = defaultdict(deque)
        self.log: list[dict] = []  # one entry per request received
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # ---- scripting ------------------------------------------------------------------------
    def script(self, class_name: str, *behaviours: str) -> None:
        with self.lock:
            self.known.add(class_name.lower())
            self.scripts[class_name.lower()].extend(behaviours)

    def expect(self, *class_names: str) -> None:
        """Make classes known (for finding the class of a request) without scripting them."""
        with self.lock:
            self.known.update(n.lower() for n in class_names)

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.log)

    def requests_for(self, class_name: str) -> list[dict]:
        with self.lock:
            return [r for r in self.log if r["class"] == class_name.lower()]

    def reset(self) -> None:
        with self.lock:
            self.log.clear()

    # ---- lifecycle ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> "FakeLLM":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # or each small write waits for a delayed ACK

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                try:
                    status, headers, body = fake._answer(self.path, raw, self.headers.get("authorization", ""),
                                                         dict(self.headers.items()))
                except _Stall as stall:
                    time.sleep(stall.seconds)
                    status, headers, body = stall.then
                data = body.encode()
                try:
                    self.send_response(status)
                    for k, v in {"content-type": "application/json", **headers}.items():
                        self.send_header(k, v)
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout) and closed the connection
                    self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True, name="fake-llm").start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeLLM":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- the protocol ---------------------------------------------------------------------
    def _class_of(self, messages: list[dict]) -> str:
        users = [m.get("content") or "" for m in messages if m.get("role") == "user"]
        last = users[-1].lower() if users else ""
        with self.lock:
            hits = [k for k in self.known if k in last]
        if hits:
            return max(hits, key=len)
        m = re.search(r"distinguishing an? (.+?) in a photo", last) or re.search(r"\ban? (.+?)[.?:]", last)
        return m.group(1) if m else "?"

    def _credentials(self, path: str, auth: str, headers: dict, raw: bytes = b"") -> list[str]:
        """What a careless server could echo: every credential-looking part of the request."""
        import base64
        from urllib.parse import parse_qsl, urlsplit

        found = []
        if auth:
            found.append(auth)
            scheme, _, token = auth.partition(" ")
            if token:
                found.append(token)
                if scheme.lower() == "basic":
                    try:
                        found += base64.b64decode(token).decode().split(":", 1)
                    except Exception:
                        pass
        for k, v in headers.items():
            if re.search(r"key|token|secret|auth", k, re.I) and k.lower() != "authorization":
                found.append(v)
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        if isinstance(body, dict):  # extra_body fields land at the top level of the JSON body
            found += [v for k, v in body.items() if isinstance(v, str) and re.search(r"key|token|secret|auth", k, re.I)]
        query = urlsplit(path).query
        if query:
            found.append(query)
            found += [v for _, v in parse_qsl(query)]
        found = [f for f in dict.fromkeys(found) if f and f != "Bearer"]
        with self.lock:
            self.seen_credentials.update(found)
        return found

    def _answer(self, path: str, raw: bytes, auth: str, headers: dict | None = None):
        echo = self._credentials(path, auth, headers or {}, raw) if self.echo_credentials else []
        status, out_headers, body = self._answer_plain(path.split("?", 1)[0], raw, auth, echo)
        if echo:
            out_headers = {**out_headers, "x-echo": " ".join(e for e in echo if e.isascii())}
            try:
                doc = json.loads(body)
                doc["echo"] = echo
                body = json.dumps(doc)
            except ValueError:
                pass
        return status, out_headers, body

    def _answer_plain(self, path: str, raw: bytes, auth: str, echo: list[str]):
        if not path.rstrip("/").endswith("/chat/completions"):
            return 404, {}, json.dumps({"error": {"message": f"no route {path}", "type": "not_found"}})
        body = json.loads(raw)
        messages = body.get("messages", [])
        cls = self._class_of(messages)
        fmt = (body.get("response_format") or {}).get("type", "none")
        with self.lock:
            queue = self.scripts.get(cls)
            from_queue = bool(queue)
            behaviour = queue.popleft() if queue else self.default
            entry = {"class": cls, "behaviour": behaviour, "format": fmt, "body": body}
            self.log.append(entry)
        token = auth.removeprefix("Bearer ").strip()
        if self.require_key is not None and token != self.require_key:
            entry["behaviour"] = "401"
            return 401, {}, _error(f"Incorrect API key provided: {token}.", "invalid_api_key")
        if fmt == "json_schema" and self.reject_json_schema:
            entry["behaviour"] = "reject_json_schema"
            self._requeue(cls, behaviour, from_queue)
            return 400, {}, _error("response_format type json_schema is not supported by this server", "invalid_request_error")
        if fmt == "json_object" and self.reject_json_object:
            entry["behaviour"] = "reject_json_object"
            self._requeue(cls, behaviour, from_queue)
            return 400, {}, _error("response_format json_object is not supported", "invalid_request_error")
        key = _answer_key(body)
        seed = body.get("seed", 0)
        if behaviour in ("429", "500", "503"):
            return int(behaviour), {"retry-after-ms": "20"}, _error(f"scripted {behaviour}", "server_error")
        if behaviour == "400":
            return 400, {}, _error("scripted bad request about something else", "invalid_request_error")
        if behaviour == "not_completion":
            return 200, {}, json.dumps({"hello": "world"})
        if behaviour == "stall":
            raise _Stall(self.stall_s, (200, {}, _completion(body, json.dumps({key: _good_items(cls, key, seed)}))))
        content = {
            "good": lambda: json.dumps({key: _good_items(cls, key, seed) + [f"a {cls} feature quoting {e}" for e in echo]}),
            "prose": lambda: "Sure! Here they are:\n```json\n" + json.dumps({key: _good_items(cls, key, seed)}) + "\n```",
            "malformed": lambda: '{"' + key + '": ["half an answer", ',
            "empty": lambda: json.dumps({key: []}),
            "name_only": lambda: json.dumps({key: [cls]}),
            "short": lambda: json.dumps({key: [f"one lonely {cls} feature"]}),
            # issue 21: unbounded answers
            "huge": lambda: json.dumps({key: _good_items(cls, key, seed) + ["x" * (3 << 20)]}),
            "long_item": lambda: json.dumps({key: _good_items(cls, key, seed) + ["y" * 5000]}),
            "many": lambda: json.dumps({key: [f"{cls} feature {seed} number {i}" for i in range(40)]}),
        }[behaviour]()
        return 200, {}, _completion(body, content)

    def _requeue(self, cls: str, behaviour: str, from_queue: bool) -> None:
        # a rejected format does not consume the class's scripted behaviour
        if from_queue:
            with self.lock:
                self.scripts[cls].appendleft(behaviour)


class _Stall(Exception):
    def __init__(self, seconds, then):
        self.seconds, self.then = seconds, then


def _answer_key(body: dict) -> str:
    rf = body.get("response_format") or {}
    if rf.get("type") == "json_schema":
        return next(iter(rf["json_schema"]["schema"]["properties"]))
    text = " ".join(m.get("content") or "" for m in body.get("messages", []))
    return "sentences" if '"sentences"' in text else "descriptors"


def _good_items(cls: str, key: str, seed: int) -> list[str]:
    if key == "sentences":
        return [f"A photo of a {cls}, seen from angle {seed}-{k}." for k in range(5)]
    return [f.format(n=cls) for f in GOOD_FEATURES]


def _completion(body: dict, content: str) -> str:
    prompt_tokens = sum(len((m.get("content") or "").split()) for m in body.get("messages", []))
    completion_tokens = len(content.split())
    return json.dumps({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "fake"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
    })


def _error(message: str, type_: str) -> str:
    return json.dumps({"error": {"message": message, "type": type_, "param": None, "code": None}})
