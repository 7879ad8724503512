"""Safety: interlocks, module sequencing, latching alarms and the audit log.

- `config`: the `interlocks`, `alarms` and `sequencer` sections of the lab YAML;
- `world`: the lab as seen on MQTT (statuses, availability, when each arrived);
- `rules`: the rule kinds, one table of evaluators;
- `interlock`: the interlock service (`trackerdcs-interlock`);
- `sender`: commands to the other daemons, with ids that trace them;
- `cli`: `trackerdcs audit`; `clock`: ISO times and time ranges;
- `sequencer`: module on/off sequences (`trackerdcs-dcs`);
- `alarms`, `audit`, `store`: latching alarms and the audit log in SQLite (`trackerdcs-alarms`).
"""
