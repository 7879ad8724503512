"""Node-RED's HTTP API as the tests call it: one request, and the editor's login form."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

# POST /auth/token with these and `password`: the editor's login (adminAuth), as its UI does it
LOGIN = {"client_id": "node-red-admin", "grant_type": "password", "scope": "*", "username": "admin"}


def request(url: str, data: dict | None = None, token: str | None = None) -> tuple[int, bytes]:
    """(HTTP status, body) of a GET, or of a form POST when `data` is given; `token`: Bearer."""
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def api(url: str, data: dict | None = None, token: str | None = None) -> tuple[int, Any]:
    """(HTTP status, the JSON answer; None for an error or an empty body)."""
    status, body = request(url, data, token)
    return status, json.loads(body or b"null") if status < 400 else None
