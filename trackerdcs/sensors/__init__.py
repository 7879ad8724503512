"""Environmental sensors: room temperature/humidity (with the dew point) and module temperatures.

- `lineformat`: the text line a sensor prints (`T=21.50 RH=45.0`), parsed strictly;
- `dewpoint`: the Magnus formula (Sonntag 1990 constants);
- `sources`: where lines come from: a serial device or TCP socket (`LineSource`), or a
  simulation inside the daemon (`SimSource`);
- `sensor`: one sensor's latest good reading, errors and staleness (pure, no I/O);
- `service`: its MQTT topic `/<name>/status`; `daemon`: the `trackerdcs-sensors` process.

Nothing connects at import time.
"""
