"""IV scans: a module's sensor leakage current against its bias voltage, measured step by step
by the dcs daemon (`/dcs/cmd/ivscan/{module|all}`, `trackerdcs iv-scan`) through the Python
client (`trackerdcs.client`), as safely as a manual command.

- `config`: the lab YAML's `ivscan` section (results folder, defaults);
- `plan`: the command's parameters, checked against the lab before anything moves;
- `analysis`: mean and spread of the readings, the breakdown criterion;
- `procedure`: one module's scan (a blocking procedure on the client);
- `results`: the CSV and the PNG plot of a scan;
- `service`: the scans of the dcs daemon, their status, points and audit events.
"""
