"""A Hugging Face hub on loopback that knows no models: every repository is "not found"."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _NoModels(BaseHTTPRequestHandler):
    def _not_found(self) -> None:
        body = json.dumps({"error": "Repository not found"}).encode()
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("X-Error-Message", "Repository not found")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = _not_found

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def empty_hub() -> Iterator[str]:
    """The endpoint (HF_ENDPOINT) of a hub with no models, for as long as the block runs."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NoModels)
    thread = threading.Thread(target=server.serve_forever, name="fake-hub", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
