"""An S3 endpoint that fails on purpose: a proxy in front of a real one (the tests' moto server) that answers chosen
requests with an error while its window is open.

Why a proxy and not a patched function: every client on the way -- PyArrow's S3 filesystem (its own retries
included), Ray's storage layer, Polars -- then meets the fault exactly as it would meet a real outage, in this
process and in the sweep subprocesses the tests start (they are pointed at the proxy through AWS_ENDPOINT_URL).

Faults (``S3FaultProxy(upstream, fault=...)``):
* ``"503"`` -- 503 SlowDown, what S3 answers when it throttles;
* ``"500"`` -- 500 InternalError;
* ``"drop"`` -- the connection is closed without an answer (a dropped connection, a storage that is gone).
``match(method, path)`` picks the requests that fail (default: every request), e.g. only reads of the table.
"""

from __future__ import annotations

import http.client
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import urlsplit

FAULTS = ("503", "500", "drop")
_ERROR_BODY = {"503": ("SlowDown", "Please reduce your request rate."),
               "500": ("InternalError", "We encountered an internal error. Please try again.")}


class S3FaultProxy:
    """Forwards every request to `upstream`; while open, the requests `match` picks get `fault` instead."""

    def __init__(self, upstream: str, fault: str = "503", match: Callable[[str, str], bool] | None = None):
        if fault not in FAULTS:
            raise ValueError(f"fault {fault!r}: one of {', '.join(FAULTS)}")
        self.upstream = urlsplit(upstream)
        self.fault = fault
        self.match = match or (lambda method, path: True)
        self.is_open = False
        self.injected = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def open(self) -> None:
        self.is_open = True

    def close(self) -> None:
        self.is_open = False

    def __enter__(self) -> "S3FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _fails(self, method: str, path: str) -> bool:
        if not (self.is_open and self.match(method, path)):
            return False
        with self._lock:
            self.injected += 1
        return True

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _relay(self) -> None:
                chunked = self.headers.get("Transfer-Encoding", "").lower() == "chunked"
                body = self._body(chunked)
                if proxy._fails(self.command, self.path):
                    self._answer_fault()
                    return
                upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                try:
                    # a chunked upload goes on chunked (its body is S3's aws-chunked content, which the server decodes)
                    upstream.request(self.command, self.path, body=iter([body]) if chunked else body,
                                     headers=dict(self.headers.items()), encode_chunked=chunked)
                    reply = upstream.getresponse()
                    payload = reply.read()
                finally:
                    upstream.close()
                self.send_response(reply.status, reply.reason)
                for key, value in reply.getheaders():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(key, value)
                # a HEAD's Content-Length is the object's size, which readers ask for before reading it
                length = reply.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(payload))
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _body(self, chunked: bool) -> bytes:
                """The request's body, whole (uploads come with chunked transfer encoding)."""
                if not chunked:
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = []
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()  # the CRLF after each chunk
                while self.rfile.readline().strip():  # trailers, up to the empty line
                    pass
                return b"".join(parts)

            def _answer_fault(self) -> None:
                if proxy.fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                code, message = _ERROR_BODY[proxy.fault]
                payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                           f"<Message>{message}</Message></Error>").encode()
                self.send_response(int(proxy.fault))
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        return Handler
