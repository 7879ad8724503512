"""Julabo circulator/chiller driver in layers: transport, protocol, model profiles, device.

- `transport`: bytes over a serial device, a pty or `socket://host:port` (`SerialTransport`).
- `protocol`: CR / CR LF framing, XON/XOFF stripping, pacing, retries, `OUT_` read-back, STATUS.
- `models`: the model families (`PROFILES`): which parameters a model has, under which command.
- `device`: the typed `Julabo` API for one profile.

Nothing is opened at import time.
"""

from trackerdcs.julabo.device import Applied, Julabo
from trackerdcs.julabo.models import PARAMETERS, PROFILES, NotSupported, Profile, profile
from trackerdcs.julabo.protocol import (
    STATUS_TABLE,
    ErrorReply,
    JulaboProtocol,
    JulaboStatus,
    JulaboTimeout,
    ProtocolError,
    ReadbackMismatch,
    Sent,
    StatusKind,
)
from trackerdcs.julabo.transport import SerialSettings, SerialTransport, Transport, TransportError

__all__ = [
    "PARAMETERS",
    "PROFILES",
    "STATUS_TABLE",
    "Applied",
    "ErrorReply",
    "Julabo",
    "JulaboProtocol",
    "JulaboStatus",
    "JulaboTimeout",
    "NotSupported",
    "Profile",
    "ProtocolError",
    "ReadbackMismatch",
    "Sent",
    "SerialSettings",
    "SerialTransport",
    "StatusKind",
    "Transport",
    "TransportError",
    "profile",
]
