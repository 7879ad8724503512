"""MQTT status topics into InfluxDB, the way `telegraf.conf` says.

Where the real Telegraf cannot run, `trackerdcs-ingest` reads the same `telegraf.conf` and does its
job for the subset of options that file uses (and refuses any other option):

- `conf`: the telegraf.conf subset (TOML, `${VAR}` substitution, Telegraf's defaults);
- `filters`, `jsonparse`, `lineproto`: MQTT payload -> metrics -> line protocol, as Telegraf's
  `json` parser and `influx` serializer do it;
- `buffer`, `writer`: the bounded metric buffer and the batching InfluxDB writer with retry;
- `consumer`: one MQTT connection per `[[inputs.mqtt_consumer]]`;
- `bridge`: wires them, counts and publishes counters (`/ingest/status`); the console script;
- `influxdb`: a small v1 HTTP API client;
- `export`, `backup`, `commands`: the users' tools (`trackerdcs export|backup|restore`).
"""
