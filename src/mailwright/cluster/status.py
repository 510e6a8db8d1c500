"""What ``mailwright cluster status`` reports, gathered from the store.

What: ``gather(store, now, heartbeat_interval)`` returns one JSON-ready dict::

    {"backend": "postgres", "now": ..., "nodes": [{"name", "started_at",
     "last_heartbeat", "age", "alive", "leases", "info"}...],
     "leases": {node: messages leased}, "queue": {state: recipients},
     "messages": messages still queued, "dsn_pending": ..., "slots": {destination: n}}

``render(status)`` is the text form. A node is "alive" when its last heartbeat is younger
than three heartbeat intervals; that judgement is for operators only (work is taken over
by lease expiry, never by heartbeat age).
"""
from __future__ import annotations

import time
from typing import Any

ALIVE_INTERVALS = 3


async def gather(store: Any, now: float | None = None,
                 heartbeat_interval: float = 10.0) -> dict[str, Any]:
    at = time.time() if now is None else now
    raw = await store.cluster_status(at)
    nodes = []
    for n in raw["nodes"]:
        age = max(0.0, at - n["last_heartbeat"])
        nodes.append({"name": n["name"], "started_at": n["started_at"],
                      "last_heartbeat": n["last_heartbeat"], "age": round(age, 1),
                      "alive": age < ALIVE_INTERVALS * heartbeat_interval,
                      "leases": n["leases"], "info": n["info"]})
    known = {n["name"] for n in nodes}
    for name, count in raw["leases"].items():     # leases of a node that never beat
        if name not in known:
            nodes.append({"name": name, "started_at": None, "last_heartbeat": None,
                          "age": None, "alive": False, "leases": count, "info": {}})
    slots = await store.slots_in_use(at) if hasattr(store, "slots_in_use") else {}
    return {"backend": getattr(store, "backend", "?"), "now": at, "nodes": nodes,
            "leases": raw["leases"], "queue": raw["recipients"],
            "messages": raw["messages"], "dsn_pending": raw["dsn_pending"],
            "slots": slots}


def render(status: dict[str, Any]) -> str:
    from ..cli.main import table, when
    lines = []
    if status["nodes"]:
        lines.append(table(
            [(n["name"], "alive" if n["alive"] else "silent",
              when(n["last_heartbeat"]), "-" if n["age"] is None else f"{n['age']:.0f}s",
              n["leases"], n["info"].get("pid", "-"), when(n["started_at"]))
             for n in status["nodes"]],
            ("NODE", "STATE", "LAST HEARTBEAT", "AGE", "LEASES", "PID", "STARTED")))
    else:
        lines.append("no nodes have sent a heartbeat")
    lines.append("")
    lines.append(f"queue: {status['messages']} message(s); recipients "
                 + ", ".join(f"{k}={v}" for k, v in status["queue"].items())
                 + f"; DSNs owed: {status['dsn_pending']}")
    if status["slots"]:
        lines.append("destination slots in use: "
                     + ", ".join(f"{d}={n}" for d, n in status["slots"].items()))
    return "\n".join(lines)
