"""Is a source alive? Judged by the age of its live status, not by its retained availability.

A broker restored from persistence serves the retained `online` and the last status of a daemon
that died with it (no last will ever fired): only a live status (not the broker's stored copy)
shows the daemon alive. Each source's status must arrive live at least every `factor` x its
heartbeat (the period at which it republishes an unchanged status, from the lab YAML); the
deadline restarts at every live status and when the watcher (re)connects to the broker.

Pure state: the caller passes the (monotonic) time. Used by the alarm service; the control UI
applies the same table (`heartbeats`, passed to it by trackerdcs.stack.nodered).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trackerdcs.topics import DCS, prefix_of

if TYPE_CHECKING:
    from trackerdcs.config import LabConfig


def heartbeats(lab: LabConfig) -> dict[str, float]:
    """Prefix -> the heartbeat (s) of the services the lab runs: every power prefix with
    channels, every chiller, every sensor, the interlock service (when the lab has rules) and the
    sequencer (when it has modules). Not the ingest bridge: its period is a command-line option,
    and a lab running the real Telegraf has no `/ingest/status` at all."""
    beats: dict[str, float] = {}
    for ch in lab.power.channels:
        beats[lab.crate_of(ch).prefixes[ch.kind]] = lab.power.publish.heartbeat
    for chiller in lab.chillers:
        beats[chiller.prefix] = chiller.heartbeat
    for sensor in lab.sensors:
        beats[sensor.prefix] = sensor.publish_interval
    if lab.interlocks.rules:
        beats[prefix_of(lab.power.interlock_topic)] = lab.interlocks.heartbeat
    if lab.modules():
        beats[DCS.prefix] = lab.sequencer.heartbeat
    return beats


class Liveness:
    """Per prefix, the time by which its next live `<prefix>/status` is due."""

    def __init__(self, heartbeats: dict[str, float], factor: float) -> None:
        self.heartbeats = dict(heartbeats)
        self.factor = factor
        self.timeouts = {p: factor * hb for p, hb in heartbeats.items()}
        self._due: dict[str, float] = {}  # empty while not watching (no broker)

    def restart(self, now: float) -> None:
        """Watch from now: connected (again) to the broker, nothing seen since."""
        self._due = {p: now + t for p, t in self.timeouts.items()}

    def suspend(self) -> None:
        """Not connected: nothing can be seen, so nothing is judged."""
        self._due = {}

    def live(self, prefix: str, now: float) -> bool:
        """A live status from `prefix` arrived; True when the prefix is watched."""
        if prefix not in self.timeouts:
            return False
        if self._due:
            self._due[prefix] = now + self.timeouts[prefix]
        return True

    def silent(self, prefix: str, now: float) -> bool:
        due = self._due.get(prefix)
        return due is not None and now >= due

    def why(self, prefix: str) -> str:
        return (
            f"{prefix}: no live status for {self.timeouts[prefix]:g} s ({self.factor:g} x its "
            f"{self.heartbeats[prefix]:g} s heartbeat): its daemon, or its link to the broker, "
            "is down (a retained status or `online` does not count)"
        )

    def next_due(self, now: float) -> float | None:
        """The earliest deadline still ahead, or None."""
        ahead = [t for t in self._due.values() if t > now]
        return min(ahead) if ahead else None
