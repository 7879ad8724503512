"""The lab model: one YAML file, validated with pydantic at start-up.

`load_config(path)` returns a `LabConfig` or raises `ConfigError`, whose message names the file,
the key (as a dotted path, list indices included) and the reason.
"""

from __future__ import annotations

import os
import re
from enum import Enum, StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from trackerdcs.clientids import check_client_ids
from trackerdcs.configbase import NonNegFloat, NonNegInt, PositiveFloat, UnknownChiller
from trackerdcs.configbase import StrictModel as _Model
from trackerdcs.guard import shorten
from trackerdcs.ivscan.config import IvScanConfig
from trackerdcs.julabo.models import DEFAULT_PROFILE, PROFILES
from trackerdcs.julabo.transport import SerialLine
from trackerdcs.labyaml import YamlFileError, read_yaml
from trackerdcs.power.boards import (
    BOARD_MODELS,
    GENERIC_NAME,
    BoardModel,
    board_model,
    known_models,
    setting_keys,
)
from trackerdcs.recipe.config import RecipesConfig
from trackerdcs.safety.config import AlarmsConfig, InterlocksConfig, SequencerConfig


class ConfigError(Exception):
    """An invalid or unreadable configuration file."""


TOPIC_LEVEL = r"[A-Za-z0-9_\-]+"  # a name that is one MQTT topic level (sensor, chiller, prefix)


def check_prefix(value: str) -> str:
    """A service's MQTT prefix: exactly one topic level, `/` and a name (`/hv`, `/julabo`).

    Every service prefix goes through here (crates' `prefixes`, chillers' `prefix`, the
    interlock's topic; sensors and chillers are named by one level already): the audit log and
    the retained-command alarms subscribe to `/+/cmd/#`, the alarms to `/+/availability`,
    Telegraf to `/+/status`, and `+` matches one level, so `/lab1/julabo` would be invisible
    to all of them."""
    if not re.fullmatch(f"/{TOPIC_LEVEL}", value):
        raise ValueError(
            f"must be one topic level, '/' and a name such as '/hv' or '/julabo' (the audit "
            f"log, the alarms and Telegraf subscribe to /+/...; no '/' inside): got {value!r}"
        )
    return value


Prefix = Annotated[str, AfterValidator(check_prefix)]


class _EnvCredentials:
    """A user name and password read from the environment variables a config names."""

    username_env: str
    password_env: str

    @property
    def username(self) -> str | None:
        return os.environ.get(self.username_env) or None

    @property
    def password(self) -> str | None:
        return os.environ.get(self.password_env) or None


class TlsConfig(_Model):
    enabled: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False


class RateLimitConfig(_Model):
    """A token bucket per command topic and sender (`trackerdcs.commands.sender_of` its id):
    `rate` commands per second on average, `burst` at once."""

    rate: PositiveFloat
    burst: int = Field(10, ge=1)


class MqttConfig(_EnvCredentials, _Model):
    """The broker, and how every service judges the commands it receives (trackerdcs.mqtt).

    Credentials come from the environment, never from the file. `command_max_age` (s) is how old
    a command's payload `time` may be when it arrives; a section may override it with its own
    `command_max_age`. `command_clock_skew` (s) is how far in the future it may be.
    """

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    username_env: str = "TRACKERDCS_MQTT_USERNAME"
    password_env: str = "TRACKERDCS_MQTT_PASSWORD"
    keepalive: int = Field(10, ge=2)
    reconnect_min_delay: PositiveFloat = 0.2
    reconnect_max_delay: PositiveFloat = 5.0
    tls: TlsConfig = TlsConfig()
    command_max_age: PositiveFloat = 5.0
    command_clock_skew: NonNegFloat = 2.0
    command_rate_limit: RateLimitConfig | None = None  # none: no rate limit


class ChannelKind(StrEnum):
    HV = "hv"
    LV = "lv"


class PowerDownMode(StrEnum):
    KILL = "Kill"
    RAMP = "Ramp"


class ChannelLimits(_Model):
    """Per-channel settings; every field may be given per kind in `defaults`, per board in
    `crates[].boards.<slot>.settings` or per channel.

    A setting named after a CAEN parameter (the parameter's name in lower case, `vmax` for
    `SVMax`) is written to the crate at every (re)connection, where the board model has that
    parameter (`trackerdcs.power.boards`); None leaves the crate's own value.
    """

    vset: NonNegFloat | None = None  # initial V0Set written at start (None: leave the crate's)
    vmax: PositiveFloat  # highest V0Set accepted from a command, also written to SVMax
    iset: PositiveFloat  # current limit written at start (I0Set, µA for HV, A for LV)
    imax: PositiveFloat  # highest I0Set accepted from a command
    trip: NonNegFloat  # Trip: time over the current limit before the channel trips, s
    rup: PositiveFloat | None = None  # RUp: ramp-up rate, V/s (boards that ramp by rate)
    rdwn: PositiveFloat | None = None  # RDWn: ramp-down rate, V/s
    ruptime: PositiveFloat | None = None  # RUpTime: ramp-up time, ms (boards that ramp by time)
    rdwtime: PositiveFloat | None = None  # RDwTime: ramp-down time, ms
    kill_rate: PositiveFloat | None = None  # RDWn for `kill`, V/s (the board's fastest)
    kill_time: PositiveFloat | None = None  # RDwTime for `kill`, ms (the board's shortest)
    pdwn: PowerDownMode | None = None  # PDwn: what the channel does after a trip
    tripint: NonNegInt | None = None  # TripInt: internal trip connections (bit mask)
    tripext: NonNegInt | None = None  # TripExt: external trip connections (bit mask)
    imrange: str | None = None  # ImRange: current monitor range (`High`, `Low`)
    unvthr: NonNegFloat | None = None  # UNVThr: under-voltage threshold, V
    ovvthr: NonNegFloat | None = None  # OVVThr: over-voltage threshold, V
    vdeadband: NonNegFloat = 0.5  # VMon change that triggers a status publish, V
    ideadband: NonNegFloat = 0.5  # IMon change that triggers a status publish, µA or A
    on_tolerance: NonNegFloat = (
        1.0  # |VMon - V0Set| within which a channel counts as at its set point
    )

    @model_validator(mode="after")
    def _consistent(self) -> ChannelLimits:
        if self.iset > self.imax:
            raise ValueError(f"iset {self.iset} exceeds imax {self.imax}")
        if self.vset is not None and self.vset > self.vmax:
            raise ValueError(f"vset {self.vset} exceeds vmax {self.vmax}")
        return self

    def ramp_seconds(self, dv: float, up: bool) -> float:
        """How long a ramp of `dv` volts takes at these settings (0 when unknown)."""
        rate, ms = (self.rup, self.ruptime) if up else (self.rdwn, self.rdwtime)
        if ms is not None:  # the board ramps to its set point (or to 0) in that time
            return ms / 1000.0
        return abs(dv) / rate if rate else 0.0


_LIMIT_FIELDS = tuple(ChannelLimits.model_fields)

# Keys that are board settings only: a board model without the parameter refuses them.
# (`vmax` and `trip` are the daemon's limits too, on every board.)
_BOARD_KEYS: dict[str, str] = {
    **{key: next(iter(names)) for key, names in setting_keys().items()},
    "kill_rate": "RDWn",
    "kill_time": "RDwTime",
}
_DAEMON_KEYS = frozenset({"vmax", "trip"})

DEFAULT_LIMITS: dict[ChannelKind, dict[str, Any]] = {
    ChannelKind.HV: dict(vmax=500.0, iset=500.0, imax=1000.0, rup=50.0, rdwn=50.0, trip=1.0,
                         kill_rate=1000.0, pdwn="Kill", vdeadband=0.5, ideadband=0.05,
                         on_tolerance=2.0),
    ChannelKind.LV: dict(vmax=12.0, iset=2.5, imax=5.0, rup=2.0, rdwn=2.0, ruptime=5000.0,
                         rdwtime=5000.0, trip=10.0, kill_rate=1000.0, kill_time=100.0,
                         pdwn="Kill", vdeadband=0.01, ideadband=0.01, on_tolerance=0.1),
}  # fmt: skip


def _refused_key(key: str, model: BoardModel) -> str | None:
    """Why a board of `model` refuses setting `key`, or None."""
    param = _BOARD_KEYS.get(key)
    if param is None or key in _DAEMON_KEYS or model.has(param):
        return None
    settings = ", ".join(sorted(k for k in model.settings if k not in _DAEMON_KEYS))
    return f"board model {model.name} has no {param} (its settings: {settings})"


class _LimitOverrides(_Model):
    """The optional per-kind / per-board / per-channel values of `ChannelLimits`."""

    vset: NonNegFloat | None = None
    vmax: PositiveFloat | None = None
    iset: PositiveFloat | None = None
    imax: PositiveFloat | None = None
    trip: NonNegFloat | None = None
    rup: PositiveFloat | None = None
    rdwn: PositiveFloat | None = None
    ruptime: PositiveFloat | None = None
    rdwtime: PositiveFloat | None = None
    kill_rate: PositiveFloat | None = None
    kill_time: PositiveFloat | None = None
    pdwn: PowerDownMode | None = None
    tripint: NonNegInt | None = None
    tripext: NonNegInt | None = None
    imrange: str | None = None
    unvthr: NonNegFloat | None = None
    ovvthr: NonNegFloat | None = None
    vdeadband: NonNegFloat | None = None
    ideadband: NonNegFloat | None = None
    on_tolerance: NonNegFloat | None = None

    def given(self) -> dict[str, Any]:
        """The values set in the file."""
        return {k: getattr(self, k) for k in _LIMIT_FIELDS if getattr(self, k) is not None}


class ChannelConfig(_LimitOverrides):
    """One logical channel: where it lives on the crate and what it powers (and any of the
    defaults to override for it)."""

    number: int = Field(ge=0)
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    kind: ChannelKind
    crate: str | None = None  # may be omitted when the lab has a single crate
    board: int = Field(ge=0, le=99)
    channel: int = Field(ge=0, le=999)
    module: str | None = Field(None, pattern=r"^[A-Za-z0-9_.\-]+$")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        if v == "all" or v.isdigit():
            raise ValueError("a channel name may not be 'all' or a bare number")
        return v


class BoardConfig(_Model):
    """A board in a crate slot: its model (`trackerdcs.power.boards`) gives its kind, channel
    count and parameters; `kind`/`channels` may be given too and must agree with it."""

    kind: ChannelKind | None = None
    channels: int | None = Field(None, ge=1, le=999)
    model: str | None = None  # a model of the table, or None / `generic`
    settings: _LimitOverrides = _LimitOverrides()  # this board's defaults (over power.defaults)

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str | None) -> str | None:
        if v is not None and v != GENERIC_NAME and v not in BOARD_MODELS:
            raise ValueError(f"unknown board model {v!r} (known: {', '.join(known_models())})")
        return v

    @model_validator(mode="after")
    def _agrees_with_model(self) -> BoardConfig:
        model = BOARD_MODELS.get(self.model or "")
        if model is not None:
            if self.kind is None:
                object.__setattr__(self, "kind", ChannelKind(model.kind))
            elif self.kind != model.kind:
                raise ValueError(f"kind: board model {model.name} is an {model.kind} board")
            if model.channels is not None:
                if self.channels is None:
                    object.__setattr__(self, "channels", model.channels)
                elif self.channels != model.channels:
                    raise ValueError(
                        f"channels: board model {model.name} has {model.channels} channels"
                    )
        if self.kind is None:
            raise ValueError("kind: give the board's kind (hv, lv) or its model")
        if self.channels is None:
            raise ValueError(f"channels: required for a {self.spec.name} board")
        for key in self.settings.given():
            if why := _refused_key(key, self.spec):
                raise ValueError(f"settings.{key}: {why}")
        return self

    @property
    def spec(self) -> BoardModel:
        """The board's entry in the model table."""
        assert self.kind is not None
        return board_model(self.model, self.kind.value)


class CrateConfig(_Model):
    """A CAEN SY4527/SY5527 mainframe."""

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    backend: Literal["epics", "caenwrapper"] = "epics"
    system: str = Field(min_length=1, description="EPICS system name, the PV prefix")
    address: str = Field("127.0.0.1", description="crate IP or host[:port] for Channel Access")
    username_env: str = "TRACKERDCS_CAEN_USERNAME"  # caenwrapper backend only
    password_env: str = "TRACKERDCS_CAEN_PASSWORD"  # caenwrapper backend only
    boards: dict[int, BoardConfig]
    prefixes: dict[ChannelKind, Prefix] = {ChannelKind.HV: "/hv", ChannelKind.LV: "/lv"}
    connect_timeout: PositiveFloat = 2.0  # a crate not answering within this is DISCONNECTED
    # EPICS: a settings PV still unconnected this long after its channel's readbacks connected
    # is counted absent (the crate does not serve it): reported once, not written
    absent_timeout: PositiveFloat = 5.0


class PublishConfig(_Model):
    """How often a status topic may go out: at once on change, within a byte budget."""

    heartbeat: PositiveFloat = 10.0  # republish status at least this often, s
    min_interval: NonNegFloat = 0.002  # never two status messages closer than this, s
    # bursts are coalesced so that a status topic stays under this rate: a big crate's status
    # (~100 kB per prefix for 768 channels) goes out about 5 times a second, a small lab's at once
    max_bytes_per_s: PositiveFloat = 500_000


class FailsafeConfig(_Model):
    """What a power daemon does by itself when it loses its supervision: its broker, or the
    supervision heartbeat (`<prefix>/supervision`) of a safety service it requires, whatever
    stopped it (the service, a bridge between brokers, the network)."""

    enabled: bool = True
    broker_timeout: PositiveFloat = 30.0  # s without the broker before HV is ramped down
    # safety services (their MQTT prefixes, e.g. `/interlock`) whose supervision heartbeat the
    # daemon requires; none: only the broker is watched
    supervisors: list[Annotated[str, Field(pattern=r"^/[^/#+]+$")]] = []
    supervision_timeout: PositiveFloat = 30.0  # s without a fresh heartbeat of one of them


class PowerConfig(_Model):
    defaults: dict[ChannelKind, _LimitOverrides] = {}
    channels: list[ChannelConfig] = []
    publish: PublishConfig = PublishConfig()
    failsafe: FailsafeConfig = FailsafeConfig()
    # refuse switching a module's LV off while its HV is on (the daemon is where it can be refused)
    lv_off_requires_hv_off: bool = True
    interlock_topic: str = "/interlock/status"  # inhibits: switching HV on refused while active
    command_max_age: PositiveFloat | None = None  # s; default: mqtt.command_max_age

    @field_validator("interlock_topic")
    @classmethod
    def _interlock_topic_form(cls, v: str) -> str:
        prefix, _, last = v.rpartition("/")
        if last != "status":
            raise ValueError(
                f"must be the interlock's <prefix>/status (/interlock/status): got {v!r}"
            )
        check_prefix(prefix)
        return v

    @field_validator("defaults")
    @classmethod
    def _consistent_defaults(cls, v: dict[ChannelKind, _LimitOverrides]) -> dict:
        for kind, values in v.items():
            try:
                ChannelLimits(**{**DEFAULT_LIMITS[kind], **values.given()})
            except ValidationError as exc:
                raise ValueError(f"{kind}: {_first_error(exc)}") from None
        return v


_URL_SCHEMES = ("socket://", "tcp://", "serial://", "rfc2217://")


def _check_line_url(value: str) -> str:
    """A serial line: a device path, `serial://PATH`, `socket://HOST:PORT` or `tcp://HOST:PORT`."""
    if value.startswith("/") or value.startswith(_URL_SCHEMES):
        if value.startswith(("socket://", "tcp://")):
            host, sep, port = value.split("://", 1)[1].rpartition(":")
            if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
                raise ValueError(f"expected {value.split('://')[0]}://HOST:PORT, got {value!r}")
        return value
    raise ValueError(
        f"expected a device path (/dev/ttyUSB0), socket://HOST:PORT or tcp://HOST:PORT, "
        f"got {value!r}"
    )


def loopback_port(url: str) -> int | None:
    """The port of a `socket://` / `tcp://` URL on 127.0.0.1 or localhost, else None."""
    if not url.startswith(("socket://", "tcp://")):
        return None
    host, _, port = url.split("://", 1)[1].rpartition(":")
    return int(port) if host in ("127.0.0.1", "localhost") and port.isdigit() else None


class SerialLineConfig(SerialLine, _Model):
    """Serial settings of a line (ignored on `socket://` lines, whose far end owns them); the
    fields and their checks are the driver's (`trackerdcs.julabo.transport.SerialLine`)."""


def _check_model(value: str) -> str:
    """A model family of `trackerdcs.julabo.models.PROFILES`."""
    if value not in PROFILES:
        raise ValueError(f"unknown Julabo model {value!r} (known: {', '.join(PROFILES)})")
    return value


DEFAULT_CHILLER = "julabo"  # the name of the chiller of the `julabo:` shorthand


class JulaboConfig(_Model):
    """A Julabo chiller on a serial line (or a serial line exposed over TCP): one entry of the lab
    YAML's `chillers` list, or its `julabo` section (the shorthand for a lab with one chiller).

    `name` names it everywhere (`trackerdcs-julabo --chiller NAME`, the `chiller` key of its
    status and tag in InfluxDB, interlock rules); `prefix` (default `/<name>`: `/julabo` for the
    shorthand) is its MQTT prefix; `modules` are the modules it cools (`all`, the default, only
    in a lab with one chiller).
    """

    name: str = Field(DEFAULT_CHILLER, pattern=f"^{TOPIC_LEVEL}$")
    url: str  # /dev/ttyUSB0, serial:///dev/ttyS0, socket://HOST:PORT, tcp://HOST:PORT
    model: str = DEFAULT_PROFILE  # the command profile: full, fl, fp50-mh, big or generic
    serial: SerialLineConfig = SerialLineConfig()
    write_delay: NonNegFloat = 0.25  # s before and after an OUT_ command (the manual's timing)
    query_delay: NonNegFloat = 0.1  # s between two queries
    timeout: PositiveFloat = 0.5  # s to wait for one reply
    retries: int = Field(1, ge=0, le=5)  # a missed/garbled reply is asked again this often
    setpoint_min: float = -30.0  # lowest set point accepted from a command, °C
    setpoint_max: float = 40.0  # highest set point accepted from a command, °C
    poll_interval: PositiveFloat = 1.0  # s from the start of one poll of the unit to the next
    heartbeat: PositiveFloat = 10.0  # republish the status at least this often, s
    reconnect_min_delay: PositiveFloat = 0.5  # first retry after the line is lost, s
    reconnect_max_delay: PositiveFloat = 5.0  # backoff ceiling, s
    prefix: Prefix = "/julabo"  # default: /<name>
    modules: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]+$")]] | Literal["all"] = "all"
    command_max_age: PositiveFloat | None = None  # s; default: mqtt.command_max_age

    @model_validator(mode="before")
    @classmethod
    def _prefix_from_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and "prefix" not in data and isinstance(data.get("name"), str):
            return {**data, "prefix": f"/{data['name']}"}
        return data

    @field_validator("url")
    @classmethod
    def _url_form(cls, v: str) -> str:
        return _check_line_url(v)

    @field_validator("model")
    @classmethod
    def _model_known(cls, v: str) -> str:
        return _check_model(v)

    @model_validator(mode="after")
    def _consistent(self) -> JulaboConfig:
        if self.setpoint_min >= self.setpoint_max:
            raise ValueError(
                f"setpoint_min {self.setpoint_min} must be below setpoint_max {self.setpoint_max}"
            )
        if self.reconnect_min_delay > self.reconnect_max_delay:
            raise ValueError("reconnect_min_delay exceeds reconnect_max_delay")
        return self


class SensorKind(StrEnum):
    ROOM = "room"  # temperature and relative humidity (and the dew point derived from them)
    MODULE = "module"  # a module's temperature


class SensorConfig(_Model):
    """One environmental sensor, published on `/<name>/status`."""

    name: str = Field(pattern=f"^{TOPIC_LEVEL}$")  # its prefix `/<name>`: one topic level
    kind: SensorKind = SensorKind.ROOM
    module: str | None = Field(None, pattern=r"^[A-Za-z0-9_.\-]+$")  # kind module only
    source: str = "sim"  # `sim`, a device path, socket://HOST:PORT or tcp://HOST:PORT
    baudrate: int = Field(9600, gt=0)  # serial sources only (8N1)
    stale_timeout: PositiveFloat = 10.0  # no good reading for this long: stale, s
    publish_interval: PositiveFloat = 2.0  # status published at this period, s
    max_temperature: float | None = None  # the module's temperature limit, °C (published)
    # % RH a reading may lie outside 0..100 and still count (clamped, flagged): see lineformat
    humidity_tolerance: NonNegFloat = Field(5.0, le=20.0)

    @field_validator("source")
    @classmethod
    def _source_form(cls, v: str) -> str:
        return v if v == "sim" else _check_line_url(v)

    @model_validator(mode="after")
    def _module_matches_kind(self) -> SensorConfig:
        if self.kind is SensorKind.MODULE and not self.module:
            raise ValueError("a module sensor needs 'module' (the module it measures)")
        if self.kind is SensorKind.ROOM and self.module:
            raise ValueError("'module' is only for kind: module")
        return self

    @property
    def prefix(self) -> str:
        return f"/{self.name}"


class SimChillerConfig(_Model):
    """How the virtual lab's Julabos behave (the simulator settings of every chiller)."""

    model: str | None = None  # the profile it impersonates; default: each chiller's `model`
    external_sensor: bool = True  # false: no Pt100 plugged in, IN_PV_02 answers `---.--`
    drop_every: int = Field(0, ge=0)  # drop every n-th reply (0: none); the backdoor can too

    @field_validator("model")
    @classmethod
    def _model_known(cls, v: str | None) -> str | None:
        return None if v is None else _check_model(v)


class SensorIVConfig(_Model):
    """A simulated module sensor's IV curve (`trackerdcs.sim.iv.SensorIV`), at the virtual lab's
    `reference_temperature`: leakage growing as sqrt(V) to full depletion, a plateau, and an
    exponential breakdown above `breakdown_voltage`."""

    depletion_voltage: PositiveFloat = 200.0  # V: full depletion
    current: PositiveFloat = 2.0  # µA at full depletion
    plateau_slope: NonNegFloat = 0.1  # relative rise of the plateau per depletion_voltage volts
    breakdown_voltage: PositiveFloat = 800.0  # V: above it the current grows exponentially
    breakdown_width: PositiveFloat = 10.0  # V for the breakdown current to grow by a factor e


class SensorIVOverrides(_Model):
    """A module's own IV parameters (`virtual_lab.modules.<name>`), over `virtual_lab.iv`."""

    depletion_voltage: PositiveFloat | None = None
    current: PositiveFloat | None = None
    plateau_slope: NonNegFloat | None = None
    breakdown_voltage: PositiveFloat | None = None
    breakdown_width: PositiveFloat | None = None


class VirtualLabConfig(_Model):
    """The coupled simulators of `trackerdcs-sim-lab` (ignored by the daemons)."""

    crate: str | None = None  # the crate the lab serves (default: the first crate)
    speed: PositiveFloat = 1.0  # simulated seconds per wall second of the thermal physics
    tick: PositiveFloat = 0.1  # physics step, wall s
    room_temperature: float = 21.0  # °C: room sensors, the chiller's ambient
    room_humidity: float = Field(45.0, ge=0, le=100)  # % RH of the room sensors
    module_lag: PositiveFloat = 120.0  # thermal time constant of a module toward the bath, s
    leakage_doubling: PositiveFloat = 7.0  # K for the HV leakage current to double
    reference_temperature: float = 20.0  # °C at which the leakage scale is 1
    chiller_rate: PositiveFloat = 2.0  # K/min the simulated chiller ramps at
    chiller: SimChillerConfig = SimChillerConfig()  # the simulated Julabo's model and faults
    line_interval: PositiveFloat = 1.0  # s between two lines of a simulated sensor
    control_port: int | None = Field(None, ge=1, le=65535)  # backdoor on 127.0.0.1 (tests)
    iv: SensorIVConfig = SensorIVConfig()  # every module's sensor IV curve ...
    modules: dict[str, SensorIVOverrides] = {}  # ... and a module's own values over it

    def sensor_iv(self, module: str) -> dict[str, float]:
        """The IV parameters of `module`'s sensor: `iv` with the module's own values over it."""
        own = self.modules.get(module)
        given = {k: v for k, v in own.model_dump().items() if v is not None} if own else {}
        return {**self.iv.model_dump(), **given}


_INFLUX_UNITS = {"ns": 1e-9, "u": 1e-6, "µ": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600,
                 "d": 86400, "w": 604800}  # fmt: skip
_INFLUX_DURATION = re.compile(r"(\d+)(ns|u|µ|ms|s|m|h|d|w)")


def influx_seconds(value: str) -> float:
    """Seconds in an InfluxQL duration (`30d`, `1h30m`); `INF` is infinite."""
    if value == "INF":
        return float("inf")
    parts = _INFLUX_DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"expected an InfluxQL duration such as 30d, 52w, 1h30m or INF: {value!r}")
    return sum(int(n) * _INFLUX_UNITS[u] for n, u in parts)


class InfluxConfig(_EnvCredentials, _Model):
    """InfluxDB (v1 HTTP API) of the local stack and how long the data is kept."""

    host: str = "127.0.0.1"
    port: int = Field(8086, ge=1, le=65535)  # HTTP API
    rpc_port: int = Field(8088, ge=1, le=65535)  # influxd's RPC service (backup/restore)
    raw_retention: str = "30d"  # raw points (default retention policy `raw`)
    downsample_interval: str = "1m"  # the continuous query's GROUP BY time()
    downsampled_retention: str = "INF"  # the downsampled copy (retention policy `downsampled`)
    username_env: str = "TRACKERDCS_INFLUX_USERNAME"
    password_env: str = "TRACKERDCS_INFLUX_PASSWORD"

    @field_validator("raw_retention", "downsample_interval", "downsampled_retention")
    @classmethod
    def _duration(cls, v: str) -> str:
        influx_seconds(v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> InfluxConfig:
        if influx_seconds(self.raw_retention) < 3600:
            raise ValueError("raw_retention: InfluxDB keeps data at least 1h")
        if influx_seconds(self.downsample_interval) >= influx_seconds(self.raw_retention):
            raise ValueError("downsample_interval must be shorter than raw_retention")
        if influx_seconds(self.downsampled_retention) < influx_seconds(self.raw_retention):
            raise ValueError("downsampled_retention must be at least raw_retention")
        if self.port == self.rpc_port:
            raise ValueError("port and rpc_port must differ")
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class LabConfig(_Model):
    """The whole lab."""

    lab: str = "lab"
    mqtt: MqttConfig = MqttConfig()
    crates: list[CrateConfig] = []
    power: PowerConfig = PowerConfig()
    # the chillers: `chillers` (a list), or `julabo` (one chiller, named `julabo`); once validated,
    # `chillers` lists every chiller of the lab, the shorthand's too
    julabo: JulaboConfig | None = None
    chillers: list[JulaboConfig] = []
    sensors: list[SensorConfig] = []
    virtual_lab: VirtualLabConfig | None = None
    influx: InfluxConfig = InfluxConfig()
    interlocks: InterlocksConfig = InterlocksConfig()  # safety: trackerdcs.safety.config
    alarms: AlarmsConfig = AlarmsConfig()
    sequencer: SequencerConfig = SequencerConfig()
    ivscan: IvScanConfig = IvScanConfig()  # IV scans: trackerdcs.ivscan
    recipes: RecipesConfig = RecipesConfig()  # thermal-cycle recipes: trackerdcs.recipe
    _warnings: list[str] = PrivateAttr(default_factory=list)
    _limits: dict[str, tuple[ChannelConfig, ChannelLimits]] = PrivateAttr(default_factory=dict)
    _index: dict[str, int] = PrivateAttr(default_factory=dict)  # channel name -> its index

    @model_validator(mode="after")
    def _cross_check(self) -> LabConfig:
        crates = {c.name: c for c in self.crates}
        if len(crates) != len(self.crates):
            raise ValueError("crate names must be unique")
        seen_prefix: dict[str, str] = {}
        for crate in self.crates:
            for prefix in crate.prefixes.values():
                if prefix in seen_prefix:
                    raise ValueError(
                        f"crates {seen_prefix[prefix]!r} and {crate.name!r} share prefix {prefix!r}"
                    )
                seen_prefix[prefix] = crate.name
        numbers: set[tuple[str, str, int]] = set()
        names: set[str] = set()
        places: set[tuple[str, int, int]] = set()
        for i, ch in enumerate(self.power.channels):
            where = f"power.channels.{i}"
            crate_name = ch.crate or (self.crates[0].name if len(self.crates) == 1 else None)
            if crate_name is None:
                raise ValueError(f"{where}.crate: required when the lab has several crates")
            crate = crates.get(crate_name)
            if crate is None:
                raise ValueError(f"{where}.crate: no crate named {crate_name!r}")
            board = crate.boards.get(ch.board)
            if board is None:
                raise ValueError(f"{where}.board: crate {crate_name!r} has no board {ch.board}")
            assert board.channels is not None
            if board.kind != ch.kind:
                raise ValueError(f"{where}.kind: board {ch.board} is a {board.kind} board")
            if ch.channel >= board.channels:
                raise ValueError(f"{where}.channel: board {ch.board} has {board.channels} channels")
            if ch.kind not in crate.prefixes:
                raise ValueError(f"{where}.kind: crate {crate_name!r} has no prefix for {ch.kind}")
            key = (crate_name, ch.kind.value, ch.number)
            if key in numbers:
                raise ValueError(f"{where}.number: {ch.kind} channel {ch.number} is defined twice")
            numbers.add(key)
            if ch.name in names:
                raise ValueError(f"{where}.name: {ch.name!r} is defined twice")
            names.add(ch.name)
            place = (crate_name, ch.board, ch.channel)
            if place in places:
                raise ValueError(f"{where}: board {ch.board} channel {ch.channel} is used twice")
            places.add(place)
            limits, warnings = self._merge_limits(ch)
            self._limits[ch.name] = (ch, limits)
            self._warnings.extend(w for w in warnings if w not in self._warnings)
        self._check_cooling(seen_prefix)
        self._check_supervision()
        check_client_ids(self)
        return self

    def _check_supervision(self) -> None:
        """`power.failsafe.supervisors` are services that publish a supervision heartbeat (the
        interlock service), and the timeout spans several of its heartbeats."""
        failsafe = self.power.failsafe
        interlock = self.power.interlock_topic.rsplit("/", 1)[0]
        for i, prefix in enumerate(failsafe.supervisors):
            if prefix != interlock:
                raise ValueError(
                    f"power.failsafe.supervisors.{i}: {prefix!r} publishes no supervision "
                    f"heartbeat (the services that do: {interlock}, the interlock service)"
                )
        interval = self.interlocks.supervision_interval
        if failsafe.supervisors and failsafe.supervision_timeout < 3 * interval:
            raise ValueError(
                f"power.failsafe.supervision_timeout: {failsafe.supervision_timeout:g} s is "
                f"shorter than 3 heartbeats of the interlock service "
                f"(interlocks.supervision_interval {interval:g} s)"
            )
        if self.interlocks.rules and not failsafe.supervisors and self.crates:
            self._warnings.append(
                "power.failsafe.supervisors is empty while the lab has interlock rules: a power "
                f"daemon cut off from the interlock service keeps its HV on (add {interlock})"
            )

    def _check_cooling(self, prefixes: dict[str, str]) -> None:
        """Julabo, sensors and virtual lab against the rest of the lab."""
        taken = {prefix: f"crate {crate}" for prefix, crate in prefixes.items()}
        modules = {ch.module for ch in self.power.channels if ch.module}
        self._check_chillers(taken, modules)
        for i, sensor in enumerate(self.sensors):
            where = f"sensors.{i}"
            if sensor.prefix in taken:
                owner = taken[sensor.prefix]
                raise ValueError(f"{where}.name: topic {sensor.prefix!r} is taken by {owner}")
            taken[sensor.prefix] = f"sensor {sensor.name}"
            if sensor.module and modules and sensor.module not in modules:
                raise ValueError(
                    f"{where}.module: no power channel powers module {sensor.module!r} "
                    f"(known: {', '.join(sorted(modules))})"
                )
        if self.virtual_lab is not None:
            unknown = sorted(set(self.virtual_lab.modules) - set(self.modules()))
            if unknown:
                raise ValueError(
                    f"virtual_lab.modules: no power channel powers {', '.join(unknown)} "
                    f"(known: {', '.join(sorted(self.modules())) or 'none'})"
                )
        lab_crate = self.virtual_lab.crate if self.virtual_lab else None
        if lab_crate is not None and lab_crate not in {c.name for c in self.crates}:
            raise ValueError(f"virtual_lab.crate: no crate named {lab_crate!r}")

    def _check_chillers(self, taken: dict[str, str], modules: set[str]) -> None:
        """The chiller list against itself and the lab; then the shorthand joins the list."""
        if self.julabo is not None and self.chillers:
            raise ValueError(
                "julabo: give either `julabo` (one chiller) or `chillers` (a list), not both; "
                "with several chillers, move it into the list: chillers: [{name: julabo, ...}]"
            )
        several = len(self.chillers) > 1
        listed = [(f"chillers.{i}", c) for i, c in enumerate(self.chillers)]
        entries = listed or ([("julabo", self.julabo)] if self.julabo else [])
        names: dict[str, str] = {}
        lines: dict[str, str] = {}
        cooled: dict[str, str] = {}
        for where, chiller in entries:
            if listed and "name" not in chiller.model_fields_set:
                raise ValueError(f"{where}.name: required (each chiller of the list is named)")
            if chiller.name in names:
                raise ValueError(
                    f"{where}.name: {chiller.name!r} is used twice ({names[chiller.name]})"
                )
            names[chiller.name] = where
            if chiller.prefix in taken:
                raise ValueError(
                    f"{where}.prefix: {chiller.prefix!r} is taken by {taken[chiller.prefix]}"
                )
            taken[chiller.prefix] = f"chiller {chiller.name}"
            if chiller.url in lines:
                raise ValueError(
                    f"{where}.url: {chiller.url!r} is the line of chiller {lines[chiller.url]}"
                )
            lines[chiller.url] = chiller.name
            if chiller.modules == "all":
                if several:
                    known = ", ".join(sorted(modules)) or "none"
                    raise ValueError(
                        f"{where}.modules: required when the lab has several chillers (the "
                        f"modules chiller {chiller.name} cools; known: {known})"
                    )
                continue
            for module in chiller.modules:
                if modules and module not in modules:
                    raise ValueError(
                        f"{where}.modules: no power channel powers module {module!r} "
                        f"(known: {', '.join(sorted(modules))})"
                    )
                if module in cooled:
                    raise ValueError(
                        f"{where}.modules: {module} is cooled by chiller {cooled[module]}"
                    )
                cooled[module] = chiller.name
        if self.julabo is not None:
            object.__setattr__(self, "chillers", [self.julabo])  # frozen: set once, here

    def chiller(self, name: str | None = None) -> JulaboConfig:
        """The chiller named `name`; without a name, the lab's only one. `UnknownChiller`, whose
        message says why, for no chiller, several, or an unknown name."""
        known = ", ".join(c.name for c in self.chillers)
        if name is None:
            if len(self.chillers) == 1:
                return self.chillers[0]
            if not self.chillers:
                raise UnknownChiller("the lab has no chiller (no `julabo` or `chillers` section)")
            raise UnknownChiller(f"the lab has several chillers ({known}): name one")
        for chiller in self.chillers:
            if chiller.name == name:
                return chiller
        raise UnknownChiller(f"no chiller named {name!r} (known: {known or 'none'})")

    def cooled_by(self, chiller: JulaboConfig) -> list[str]:
        """The modules `chiller` cools (its `modules`; `all`: every module of the lab)."""
        if chiller.modules == "all":
            names = list(self.modules())
            return names + [s.module for s in self.sensors if s.module and s.module not in names]
        return list(chiller.modules)

    def chiller_of(self, module: str) -> JulaboConfig | None:
        """The chiller that cools `module`, or None."""
        return next((c for c in self.chillers if module in self.cooled_by(c)), None)

    def virtual_lab_crate(self) -> CrateConfig | None:
        """The crate the virtual lab simulates: `virtual_lab.crate`, else the first EPICS crate
        on loopback (None without a virtual lab or such a crate)."""
        if self.virtual_lab is None:
            return None
        if self.virtual_lab.crate is not None:
            return self.crate(self.virtual_lab.crate)
        for crate in self.crates:
            host = crate.address.rsplit(":", 1)[0] if ":" in crate.address else crate.address
            if crate.backend == "epics" and host in ("127.0.0.1", "localhost"):
                return crate
        return None

    def modules(self) -> dict[str, list[ChannelConfig]]:
        """Module name -> the power channels (HV and LV) that power it, in config order."""
        out: dict[str, list[ChannelConfig]] = {}
        for ch in self.power.channels:
            if ch.module:
                out.setdefault(ch.module, []).append(ch)
        return out

    def crate(self, name: str) -> CrateConfig:
        for crate in self.crates:
            if crate.name == name:
                return crate
        raise KeyError(name)

    def crate_of(self, ch: ChannelConfig) -> CrateConfig:
        return self.crate(ch.crate) if ch.crate else self.crates[0]

    def channels_of(self, crate: str, kind: ChannelKind | None = None) -> list[ChannelConfig]:
        return [
            ch
            for ch in self.power.channels
            if self.crate_of(ch).name == crate and (kind is None or ch.kind == kind)
        ]

    def board_of(self, ch: ChannelConfig) -> BoardConfig:
        """The board a channel lives on."""
        return self.crate_of(ch).boards[ch.board]

    def limits_for(self, ch: ChannelConfig) -> ChannelLimits:
        """Built-in defaults < the kind's `defaults` < the board's `settings` < the channel's
        own values; only the settings the channel's board model has (see `_merge_limits`)."""
        cached = self._limits.get(ch.name)
        if cached is None or cached[0] is not ch:
            cached = self._limits[ch.name] = (ch, self._merge_limits(ch)[0])
        return cached[1]

    @property
    def warnings(self) -> list[str]:
        """What the file says that was accepted with a warning (old keys converted)."""
        return list(self._warnings)

    def _merge_limits(self, ch: ChannelConfig) -> tuple[ChannelLimits, list[str]]:
        """The channel's limits, and the warnings of converting old keys.

        A key the board model has no parameter for is an error naming where it was given; a
        built-in default for such a parameter is dropped. LV `rup`/`rdwn` (V/s) of the old
        files, on a board that ramps by time, become `ruptime`/`rdwtime` = 1000 x vset / rate
        (ms to ramp to the set point) when `vset` is known, else an error says how to write them.
        """
        crate = self.crate_of(ch)
        board = crate.boards[ch.board]
        model = board.spec
        crate_index = next(i for i, c in enumerate(self.crates) if c is crate)
        if not self._index:
            for i, c in enumerate(self.power.channels):
                self._index.setdefault(c.name, i)
        defaults = self.power.defaults.get(ch.kind)
        layers = [
            (f"power.defaults.{ch.kind}", defaults.given() if defaults else {}),
            (f"crates.{crate_index}.boards.{ch.board}.settings", board.settings.given()),
            (f"power.channels.{self._index[ch.name]}", ch.given()),
        ]
        values = {k: v for k, v in DEFAULT_LIMITS[ch.kind].items() if not _refused_key(k, model)}
        origin: dict[str, str] = {}
        for where, given in layers:
            for key, value in given.items():
                if key in ("rup", "rdwn") and model.ramp_by_time:
                    continue  # converted below
                if why := _refused_key(key, model):
                    raise ValueError(f"{where}.{key}: {why} (channel {ch.name!r})")
                values[key], origin[key] = value, where
        warnings = []
        for rate_key, time_key in (("rup", "ruptime"), ("rdwn", "rdwtime")):
            given_at = [w for w, g in layers if rate_key in g]
            if not model.ramp_by_time or not given_at:
                continue
            where = f"{given_at[-1]}.{rate_key}"
            rate = [g for _, g in layers if rate_key in g][-1][rate_key]
            vset = values.get("vset")
            if time_key in origin or not vset:
                why = ""
                if time_key not in origin:  # 0 is a value: say which one is the trouble
                    why = f"; channel {ch.name!r} " + (
                        "has no vset to convert it with" if vset is None
                        else f"has vset {vset:g} V, from which no ramp time follows"
                    )  # fmt: skip
                raise ValueError(
                    f"{where}: board model {model.name} ramps by time, not rate: write "
                    f"{time_key} (ms to ramp to the set point) instead of {rate_key} (V/s){why}"
                )  # fmt: skip
            values[time_key] = round(1000.0 * vset / rate, 3)
            warnings.append(
                f"{where}: board model {model.name} ramps by time: {rate_key} {rate:g} V/s "
                f"converted to {time_key} {values[time_key]:g} ms for channel {ch.name!r} "
                f"(vset {vset:g} V); write {time_key} (ms) instead"
            )
        for key, value in values.items():
            param = _BOARD_KEYS.get(key)
            if not param or not model.has(param) or key in ("kill_rate", "kill_time"):
                continue
            if why := model.by_name[param].check(value.value if isinstance(value, Enum) else value):
                raise ValueError(f"{origin.get(key, 'default')}.{key}: {param} {why}")
        try:
            return ChannelLimits(**values), warnings
        except ValidationError as exc:
            raise ValueError(f"channel {ch.name!r}: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return f"{loc}: {err['msg']}" if loc else err["msg"]


MAX_ERRORS = 20  # error lines of one file


def _format_errors(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: invalid configuration"]
    errors = exc.errors()
    for err in errors[:MAX_ERRORS]:
        loc = ".".join(str(p) for p in err["loc"] if p not in ("function-after",))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {shorten(loc, 120) or '(top level)'}: {shorten(msg, 300)}")
    if len(errors) > MAX_ERRORS:
        lines.append(f"  ... and {len(errors) - MAX_ERRORS} more")
    return "\n".join(lines)


def parse_config(data: Any, path: Path | str = "<config>") -> LabConfig:
    """Validate already-loaded YAML data."""
    path = Path(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    try:
        return LabConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(path, exc)) from None


def load_config(path: Path | str) -> LabConfig:
    """Read and validate a lab YAML file (`trackerdcs.labyaml`: UTF-8, no key given twice)."""
    path = Path(path)
    try:
        data = read_yaml(path)
    except YamlFileError as exc:
        raise ConfigError(str(exc)) from None
    return parse_config(data, path)
