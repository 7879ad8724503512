"""Thermal-cycle recipes: YAML files of steps (chiller set point, wait until stable, module
on/off, hold, IV scan, repeat) that the dcs daemon runs unattended (`/dcs/cmd/recipe/...`,
`trackerdcs recipe run FILE`), through the Python client like the IV scans, as safely as a
manual command.

- `config`: the lab YAML's `recipes` section (the folder of recipe files, the status heartbeat);
- `model`: a recipe file, validated before anything runs (the file, the step and the key of
  every problem), and checked against the lab;
- `procedure`: one recipe run (a blocking procedure on the client): pause, resume, abort, the
  interlocks and the dew point;
- `service`: the recipe of the dcs daemon, its commands, status and audit events;
- `cli`: `trackerdcs recipe run|check|pause|resume|abort|status`.
"""
