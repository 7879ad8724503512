"""Julabo circulator/chiller driver in three layers: transport, protocol, device.

- `transport`: bytes over a serial device, a pty or `socket://host:port` (`SerialTransport`).
- `protocol`: CR / CR LF framing, XON/XOFF stripping, pacing, `OUT_` read-back, STATUS table.
- `device`: the typed `Julabo` API, declared as a table of parameters.

Nothing is opened at import time.
"""

from trackerdcs.julabo.device import Control, Julabo, Reading
from trackerdcs.julabo.protocol import (
    STATUS_TABLE,
    ErrorReply,
    JulaboProtocol,
    JulaboStatus,
    JulaboTimeout,
    ProtocolError,
    ReadbackMismatch,
    StatusKind,
)
from trackerdcs.julabo.transport import SerialSettings, SerialTransport, Transport, TransportError

__all__ = [
    "STATUS_TABLE",
    "Control",
    "ErrorReply",
    "Julabo",
    "JulaboProtocol",
    "JulaboStatus",
    "JulaboTimeout",
    "ProtocolError",
    "ReadbackMismatch",
    "Reading",
    "SerialSettings",
    "SerialTransport",
    "StatusKind",
    "Transport",
    "TransportError",
]
