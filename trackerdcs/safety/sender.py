"""Commands a safety service sends to the other daemons, with ids that trace them.

Every command goes out as `{"value": ..., "id": "<source>:<tag>:<n>", "time": <unix s>}` at
QoS 1. The audit log takes the part before the first `:` as the sender (`interlock`, `dcs`); the
answers on `<prefix>/response` carry the id back, so `request()` can wait for its own.

`time` lets the daemon refuse a command that arrives too late (trackerdcs.mqtt.CommandGate); a
sender whose every command must run whenever it arrives (the interlock: its actions only make the
lab safer, also its chiller set point) sends none (`stamp_time=False`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from typing import Any, Protocol

from trackerdcs.guard import JsonError, loads
from trackerdcs.mqtt import unix_time

log = logging.getLogger(__name__)


class Publisher(Protocol):
    def publish(self, topic: str, payload: str | bytes, *, qos: int = 0, retain: bool = False): ...


class CommandSender:
    def __init__(self, link: Publisher, source: str, stamp_time: bool = True) -> None:
        self.link = link
        self.source = source
        self.stamp_time = stamp_time
        self._numbers = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def send(self, topic: str, value: Any, tag: str) -> str:
        """Publish a command; its id."""
        request_id = f"{self.source}:{tag}:{next(self._numbers)}"
        self.link.publish(topic, self._payload(value, request_id), qos=1)
        return request_id

    def _payload(self, value: Any, request_id: str) -> str:
        command: dict[str, Any] = {"value": value, "id": request_id}
        if self.stamp_time:
            command["time"] = unix_time()
        return json.dumps(command)

    async def request(self, topic: str, value: Any, tag: str, timeout: float) -> dict[str, Any]:
        """Send a command and wait for its answer; TimeoutError after `timeout` s."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        request_id = f"{self.source}:{tag}:{next(self._numbers)}"
        self._waiting[request_id] = future
        try:
            self.link.publish(topic, self._payload(value, request_id), qos=1)
            return await asyncio.wait_for(future, timeout)
        finally:
            self._waiting.pop(request_id, None)

    def on_response(self, payload: bytes) -> dict[str, Any] | None:
        """An answer from some `<prefix>/response`: the answer if it is one of ours, else None."""
        try:
            answer = loads(payload)
        except JsonError:
            return None
        request_id = answer.get("id") if isinstance(answer, dict) else None
        if not isinstance(request_id, str) or not request_id.startswith(f"{self.source}:"):
            return None
        future = self._waiting.pop(request_id, None)
        if future is not None and not future.done():
            future.set_result(answer)
        return answer
