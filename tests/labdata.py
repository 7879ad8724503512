"""What tests know about a lab: its power channels, boards and modules, read from the lab file.

Tests never write a board slot, a channel number or a channel name of their own: they ask the
lab they start. `LabData(data)` wraps a lab file's parsed YAML (`LabData.load(path)` reads one);
`LabData(data, crate=NAME)` (or `.crate(NAME)`) is the view of one crate of a lab of several
(deploy/lab.multihost.dummy.yml). `EXAMPLE` is examples/lab.yml, the file every test lab
(`write_lab`, `PowerLab`, the virtual lab, the compose stacks) starts from. Layouts
(`write_lab(layout=...)`) move boards but keep channel names, numbers and modules, so
module-level parameter lists may take those from `EXAMPLE`; a board slot always comes from the
lab actually started (`PowerLab.lab`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

EXAMPLE_LAB = Path(__file__).resolve().parent.parent / "examples" / "lab.yml"


@dataclass(frozen=True)
class Channel:
    """One `power.channels` entry of a lab file: `name`, `kind` (hv, lv), `number` (the
    `{ch}` of its command topics), crate `board` slot and `channel` on that board, `module`,
    the MQTT `prefix` of its kind on its crate (`crates[].prefixes`, /hv and /lv by default)
    and its `crate`'s name (the entry's `crate`, default: the first crate)."""

    name: str
    kind: str
    number: int
    board: int
    channel: int
    module: str | None
    prefix: str
    vmax: float | None = None  # the channel's own `vmax`, when it overrides the default
    crate: str = ""

    @property
    def place(self) -> tuple[int, int]:
        """(board slot, channel on the board): the address of its crate PVs."""
        return self.board, self.channel

    def topic(self, command: str, by: str = "name") -> str:
        """`<prefix>/cmd/<command>/<ch>`, the channel named `by` its `name`, `number` or
        `module` (docs/topics.md: `{ch}`)."""
        return f"{self.prefix}/cmd/{command}/{getattr(self, by)}"


def _channel(entry: dict, crates: dict[str, dict]) -> Channel:
    name, kind, number, board, channel = (
        entry[k] for k in ("name", "kind", "number", "board", "channel")
    )
    module, vmax = entry.get("module"), entry.get("vmax")
    crate = entry.get("crate") or next(iter(crates))
    prefixes = {"hv": "/hv", "lv": "/lv", **crates[crate].get("prefixes", {})}
    return Channel(
        name, kind, int(number), int(board), int(channel), module, prefixes[kind], vmax, crate
    )


class LabData:
    """The power side of a lab file's data (the parsed YAML); with `crate`, only the channels
    of the crate of that name (a lab of several crates: each has its own prefixes)."""

    def __init__(self, data: dict, crate: str | None = None) -> None:
        self.data = data
        crates = {c["name"]: c for c in data["crates"]}
        channels = [_channel(c, crates) for c in data["power"]["channels"]]
        self.channels_all = [c for c in channels if crate is None or c.crate == crate]

    @classmethod
    def load(cls, path: Path) -> LabData:
        return cls(yaml.safe_load(Path(path).read_text()))

    def crate(self, name: str) -> LabData:
        """The view of the crate `name`: its channels only."""
        return LabData(self.data, crate=name)

    @property
    def crates(self) -> list[str]:
        """The names of the lab's crates, in the lab file's order."""
        return [c["name"] for c in self.data["crates"]]

    def channels(self, kind: str | None = None) -> list[Channel]:
        """The channels of this `kind` (all when None), in the lab file's order."""
        return [c for c in self.channels_all if kind is None or c.kind == kind]

    def channel(self, kind: str, index: int = 0) -> Channel:
        """The `index`-th channel of this kind in the lab file (0: the first)."""
        return self.channels(kind)[index]

    def named(self, name: str) -> Channel:
        return next(c for c in self.channels_all if c.name == name)

    def limited(self, kind: str) -> Channel:
        """The first channel of this kind with a `vmax` of its own (the example's lower one)."""
        return next(c for c in self.channels(kind) if c.vmax is not None)

    def of_module(self, module: str, kind: str) -> Channel:
        """The channel of this kind that powers `module`."""
        return next(c for c in self.channels_all if c.module == module and c.kind == kind)

    def targets(self, kind: str) -> list[tuple[str, list[str]]]:
        """`{ch}` values of this kind's commands, one of each form (a number, a channel name, a
        module, `all`), each with the channel names it reaches: (target, names)."""
        chs = self.channels(kind)
        return [
            (str(chs[0].number), [chs[0].name]),
            (chs[1].name, [chs[1].name]),
            (str(chs[2].module), [c.name for c in chs if c.module == chs[2].module]),
            ("all", [c.name for c in chs]),
        ]

    @property
    def modules(self) -> list[str]:
        """The modules of the power channels, in the lab file's order."""
        return list(dict.fromkeys(c.module for c in self.channels_all if c.module))

    @property
    def places(self) -> dict[str, tuple[int, int]]:
        """channel name -> (board slot, channel on the board)."""
        return {c.name: c.place for c in self.channels_all}

    @property
    def slots(self) -> dict[str, int]:
        """kind -> the slot of the first board that powers channels of that kind."""
        slots: dict[str, int] = {}
        for c in self.channels_all:
            slots.setdefault(c.kind, c.board)
        return slots


EXAMPLE = LabData.load(EXAMPLE_LAB)
