#!/bin/bash
# The official image's first start, from its documented variables: when the volume has no
# meta directory yet and authentication is on with INFLUXDB_ADMIN_USER set (or INFLUXDB_DB is
# set, or /docker-entrypoint-initdb.d has scripts), start influxd on 127.0.0.1 only, create
# the admin user, the database INFLUXDB_DB and the users INFLUXDB_USER (all on the database),
# INFLUXDB_WRITE_USER (write) and INFLUXDB_READ_USER (read), run the init scripts, stop it.
set -e
auth=${INFLUXDB_HTTP_AUTH_ENABLED:-$(grep -ioE '^\s*auth-enabled\s*=\s*true' /etc/influxdb/influxdb.conf || true)}
auth=$(echo "$auth" | grep -io true || true)
meta=${INFLUXDB_META_DIR:-/var/lib/influxdb/meta}
users=
if [ -n "$auth" ] && [ -n "$INFLUXDB_ADMIN_USER" ]; then
    users=1
fi
if [ -d "$meta" ] || { [ -z "$users" ] && [ -z "$INFLUXDB_DB" ] && [ -z "$(ls -A /docker-entrypoint-initdb.d 2>/dev/null)" ]; }; then
    exit 0
fi

random() { tr -dc _A-Za-z0-9- </dev/urandom | head -c 32; }
port=8086
INFLUXDB_HTTP_BIND_ADDRESS=127.0.0.1:$port INFLUXDB_HTTP_HTTPS_ENABLED=false influxd "$@" &
pid=$!
query=(influx -host 127.0.0.1 -port "$port")
if [ -n "$users" ]; then
    if [ -z "$INFLUXDB_ADMIN_PASSWORD" ]; then
        INFLUXDB_ADMIN_PASSWORD=$(random)  # secret-scan: allow (made at run time)
        echo "INFLUXDB_ADMIN_PASSWORD:$INFLUXDB_ADMIN_PASSWORD"
    fi
    first="CREATE USER \"$INFLUXDB_ADMIN_USER\" WITH PASSWORD '$INFLUXDB_ADMIN_PASSWORD' WITH ALL PRIVILEGES"
elif [ -n "$INFLUXDB_DB" ]; then
    first="CREATE DATABASE \"$INFLUXDB_DB\""
else
    first="SHOW DATABASES"
fi
for _ in $(seq 30); do
    if "${query[@]}" -execute "$first" >/dev/null 2>&1; then
        first=
        break
    fi
    echo "influxdb init process in progress..."
    sleep 1
done
if [ -n "$first" ]; then
    echo "influxdb init process failed." >&2
    exit 1
fi
if [ -n "$users" ]; then
    query+=(-username "$INFLUXDB_ADMIN_USER" -password "$INFLUXDB_ADMIN_PASSWORD")
    [ -z "$INFLUXDB_DB" ] || "${query[@]}" -execute "CREATE DATABASE \"$INFLUXDB_DB\""
    for kind in USER:ALL WRITE_USER:WRITE READ_USER:READ; do
        var=INFLUXDB_${kind%%:*}
        user=${!var}
        [ -n "$user" ] || continue
        pvar=${var}_PASSWORD
        password=${!pvar}  # secret-scan: allow (from the environment)
        if [ -z "$password" ]; then
            password=$(random)  # secret-scan: allow (made at run time)
            echo "$pvar:$password"
        fi
        "${query[@]}" -execute "CREATE USER \"$user\" WITH PASSWORD '$password'"
        "${query[@]}" -execute "REVOKE ALL PRIVILEGES FROM \"$user\""
        [ -z "$INFLUXDB_DB" ] || "${query[@]}" -execute "GRANT ${kind#*:} ON \"$INFLUXDB_DB\" TO \"$user\""
    done
fi
for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
        *.sh) echo "$0: running $f"; . "$f" ;;
        *.iql) echo "$0: running $f"; "${query[@]}" -execute "$(cat "$f")" ;;
        *) [ ! -e "$f" ] || echo "$0: ignoring $f" ;;
    esac
done
if ! kill -s TERM "$pid" || ! wait "$pid"; then
    echo "influxdb init process failed. (Could not stop influxdb)" >&2
    exit 1
fi
