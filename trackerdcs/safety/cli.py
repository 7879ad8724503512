"""`trackerdcs audit`: list the audit log by time range, module and source.

trackerdcs audit [--config lab.yml] [--since 1h] [--until T] [--module M1] [--source interlock]
                 [--kind command|action] [--limit N] [--json] [--db FILE]

By default it asks the running alarm service (`/audit/cmd/query` over MQTT, broker from the lab
YAML); with `--db` it reads the SQLite file itself (no broker needed).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from typing import Any

from trackerdcs.cliargs import add_config
from trackerdcs.safety.clock import iso, parse_when
from trackerdcs.topics import AUDIT


def add_safety_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="list the audit log (commands and automatic actions)")
    add_config(p, what="lab YAML file (the broker)", default="examples/lab.yml")
    p.add_argument("--since", default="1h", help="ISO time or a span back (30m, 2h, 7d): 1h")
    p.add_argument("--until", help="ISO time or a span back (default: now)")
    p.add_argument("--module", help="only records about this module")
    p.add_argument("--source", help="only this sender: interlock, dcs, a client id, ...")
    p.add_argument("--kind", choices=("command", "action"), help="only commands or actions")
    p.add_argument("--limit", type=int, default=200, help="newest N records (200)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--db", help="read this SQLite file instead of asking the alarm service")
    p.add_argument("--timeout", type=float, default=5.0, help="s to wait for the answer")
    p.set_defaults(func=_cmd_audit)


def _cmd_audit(args: argparse.Namespace) -> int:
    query: dict[str, Any] = {"since": args.since, "limit": args.limit}
    for key in ("until", "module", "source", "kind"):
        if getattr(args, key) is not None:
            query[key] = getattr(args, key)
    try:
        records = _from_db(args.db, query) if args.db else _from_service(args, query)
    except (OSError, ValueError, TimeoutError, RuntimeError) as exc:
        print(f"trackerdcs audit: {exc}", file=sys.stderr)
        return 1
    for record in records:
        print(json.dumps(record) if args.json else format_record(record))
    return 0


def _from_db(path: str, query: dict[str, Any]) -> list[dict[str, Any]]:
    from trackerdcs.safety.store import Store

    now = time.time()
    store = Store(path)
    try:
        records, _ = store.records(
            since=parse_when(query["since"], now),
            until=parse_when(query["until"], now) if "until" in query else None,
            module=query.get("module"), source=query.get("source"), kind=query.get("kind"),
            limit=query["limit"],
        )  # fmt: skip
    finally:
        store.close()
    return records


def _from_service(args: argparse.Namespace, query: dict[str, Any]) -> list[dict[str, Any]]:
    """Ask `/audit/cmd/query` with an MQTT 5 response topic of our own."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from trackerdcs.config import load_config
    from trackerdcs.guard import JsonError, loads
    from trackerdcs.mqtt import apply_broker_settings

    cfg = load_config(args.config).mqtt
    token = uuid.uuid4().hex[:12]
    reply_topic = AUDIT.below("reply").leaf(token)
    answer: dict[str, Any] = {}
    subscribed, answered = threading.Event(), threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"trackerdcs-audit-{token}",
                         protocol=mqtt.MQTTv5)  # fmt: skip
    apply_broker_settings(client, cfg)
    client.on_connect = lambda c, *_: c.subscribe(reply_topic, qos=1)
    client.on_subscribe = lambda *_: subscribed.set()

    def on_message(c: Any, userdata: Any, msg: Any) -> None:
        try:  # never an exception into paho's thread: the command would wait for its timeout
            reply = loads(msg.payload, "the answer")
        except JsonError as exc:
            reply = {"ok": False, "error": str(exc)}
        answer.update(reply if isinstance(reply, dict) else {"ok": False, "error": "no object"})
        answered.set()

    client.on_message = on_message
    client.connect(cfg.host, cfg.port)
    client.loop_start()
    try:
        if not subscribed.wait(args.timeout):
            raise TimeoutError(f"no broker at {cfg.host}:{cfg.port}")
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = reply_topic
        props.UserProperty = ("client_id", "trackerdcs-audit")
        payload = json.dumps({"value": query, "id": f"audit-cli:{token}", "time": time.time()})
        client.publish(AUDIT.command("query"), payload, qos=1, properties=props)
        if not answered.wait(args.timeout):
            raise TimeoutError(f"no answer from the alarm service within {args.timeout:g} s")
    finally:
        client.disconnect()
        client.loop_stop()
    if not answer.get("ok"):
        raise RuntimeError(answer.get("error") or "refused")
    if answer.get("truncated"):
        print(f"(the newest {answer['count']} records; narrow the range for more)",
              file=sys.stderr)  # fmt: skip
    return answer["records"]


def format_record(r: dict[str, Any]) -> str:
    """One line: time, source, what, answer."""
    modules = ",".join(r["modules"]) or "-"
    if r["kind"] == "command":
        answer = "" if r["ok"] is None else " -> ok" if r["ok"] else f" -> refused: {r['error']}"
        what = f"{r['topic']} {r['payload']}{answer}"
    else:
        what = f"{r['event']}: {r['text']}"
    return f"{iso(r['time'])}  {r['source']:<12} {modules:<8} {what}"
