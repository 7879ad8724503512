"""A small InfluxDB v1 HTTP API client: `/ping`, InfluxQL on `/query`, line protocol on `/write`.

The v1 API is served by InfluxDB 1.x, 2.x (compatibility endpoints) and 3.x alike. Standard
library only (urllib); the bridge's writer keeps its own persistent connection (`writer.py`).
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

DATABASE = "trackerdcs"  # the database telegraf.conf writes to (tests check they agree)


class InfluxError(Exception):
    """InfluxDB refused a request or could not be reached."""


@dataclass(frozen=True)
class Series:
    """One series of a query result."""

    name: str
    tags: dict[str, str]
    columns: list[str]
    values: list[list[Any]]

    def rows(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.values]


def _series(raw: dict[str, Any]) -> Series:
    return Series(raw.get("name", ""), raw.get("tags") or {}, raw["columns"], raw.get("values", []))


def basic_auth(username: str | None, password: str | None) -> dict[str, str]:
    """The Authorization header for these credentials (none without a user name)."""
    if not username:
        return {}
    token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


class InfluxClient:
    """InfluxQL queries and line-protocol writes against one InfluxDB URL."""

    def __init__(
        self,
        url: str,
        database: str = DATABASE,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.database = database
        self.timeout = timeout
        self._headers = basic_auth(username, password)

    def _request(self, path: str, params: dict[str, str], body: bytes | None = None) -> bytes:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        req = urllib.request.Request(url, data=body, headers=self._headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace").strip()
            raise InfluxError(f"{self.url}{path}: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise InfluxError(f"{self.url}: cannot reach InfluxDB: {reason}") from None

    def ping(self) -> bool:
        """True when InfluxDB answers `/ping`."""
        try:
            self._request("/ping", {})
        except InfluxError:
            return False
        return True

    def query(
        self, q: str, database: str | None = None, epoch: str | None = None, post: bool = False
    ) -> list[list[Series]]:
        """Run InfluxQL; one list of series per statement. Raises `InfluxError` on any error.

        `post` is needed for statements that change things (CREATE, DROP, ALTER, SELECT INTO).
        """
        params = {"q": q}
        db = self.database if database is None else database
        if db:
            params["db"] = db
        if epoch:
            params["epoch"] = epoch
        if post:
            body = urllib.parse.urlencode(params).encode()
            raw = self._request("/query", {}, body)
        else:
            raw = self._request("/query", params)
        data = json.loads(raw)
        if "error" in data:
            raise InfluxError(f"query failed: {data['error']}: {q}")
        out: list[list[Series]] = []
        for result in data.get("results", []):
            if "error" in result:
                raise InfluxError(f"query failed: {result['error']}: {q}")
            out.append([_series(s) for s in result.get("series", [])])
        return out

    def series(self, q: str, **kw: Any) -> list[Series]:
        """The series of a single-statement query."""
        results = self.query(q, **kw)
        return results[0] if results else []

    def execute(self, q: str, database: str | None = None) -> None:
        """A statement that changes something (POST)."""
        self.query(q, database=database, post=True)

    def write(self, lines: bytes, rp: str | None = None, precision: str | None = None) -> None:
        params = {"db": self.database}
        if rp:
            params["rp"] = rp
        if precision:
            params["precision"] = precision
        self._request("/write", params, lines)

    def count(self, measurement: str, field: str, where: str = "", rp: str | None = None) -> int:
        """Number of points with `field` in `measurement` (0 when there are none)."""
        source = f'"{rp}"."{measurement}"' if rp else f'"{measurement}"'
        q = f'SELECT count("{field}") FROM {source}'
        if where:
            q += f" WHERE {where}"
        series = self.series(q)
        return int(series[0].values[0][1]) if series else 0


def quote_ident(name: str) -> str:
    """An InfluxQL identifier in double quotes."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_string(value: str) -> str:
    """An InfluxQL string literal in single quotes."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
