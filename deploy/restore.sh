#!/usr/bin/env bash
# Restore the named volumes of a deploy/backup.sh directory, replacing what they hold:
#   deploy/restore.sh backups/stack-20240501T080000Z
#   COMPOSE="docker-compose -f docker-compose.yml -f ..." deploy/restore.sh DIR
#   SERVICES="mosquitto influxdb ..." deploy/restore.sh DIR     a stack without some services
# The stack is stopped (or was taken down: the volumes are created again), each volume the
# backup holds is emptied and refilled from it (as root, owners kept), InfluxDB's database
# dropped and restored with influxd restore -portable, then the stack started again
# (influxdb-setup re-creates the continuous query and the users' grants from .env).
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/volumes.sh

src=${1:?usage: deploy/restore.sh BACKUP_DIR}
[ -f "$src/MANIFEST" ] || { echo "restore: $src is not a deploy/backup.sh directory" >&2; exit 1; }
read -r -p "restore: replace the stack's data with $src? [y/N] " answer
[ "$answer" = y ] || exit 1

$COMPOSE stop
# the table on fd 3: the commands in the loop (docker compose exec, run) read stdin
while read -r volume service path method <&3; do
    [ -n "$volume" ] || continue
    runs "$service" || continue
    if ! grep -qx "  - $volume" "$src/MANIFEST"; then
        echo "restore: $volume is not in the backup: left as it is" >&2
        continue
    fi
    case "$method" in
        tar)
            $COMPOSE run --rm --no-deps -T -u 0 --entrypoint sh "$service" \
                -c "find '$path' -mindepth 1 -maxdepth 1 -exec rm -rf {} + && tar -C '$path' -xf -" <"$src/$volume.tar"
            ;;
        sqlite)
            $COMPOSE run --rm --no-deps -T -u 0 --entrypoint sh "$service" -c "
                db=\$(python -c 'from trackerdcs.config import load_config; print(load_config(\"/etc/trackerdcs/lab.yml\").alarms.db)')
                rm -f \"\$db-wal\" \"\$db-shm\" && cat >\"\$db\" && chown trackerdcs: \"\$db\"" \
                <"$src/$volume.sqlite"
            ;;
        influx)
            $COMPOSE up -d --no-deps "$service"
            tries=0
            until in_service "$service" curl -sf http://127.0.0.1:8086/ping; do
                tries=$((tries + 1))
                [ "$tries" -lt 60 ] || { echo "restore: InfluxDB did not answer" >&2; exit 1; }
                sleep 2
            done
            in_service "$service" sh -c 'd=$(mktemp -d) && tar -C "$d" -xf - \
                && influx -username "$INFLUXDB_ADMIN_USER" -password "$INFLUXDB_ADMIN_PASSWORD" \
                    -execute "DROP DATABASE trackerdcs" \
                && influxd restore -portable -db trackerdcs "$d" && rm -rf "$d"' <"$src/$volume.tar"
            ;;
    esac
    echo "restore: $volume <- $src"
done 3<<<"$STACK_VOLUMES"

# shellcheck disable=SC2086 # the service names, one word each
$COMPOSE up -d $SERVICES
echo "restore: done; the stack is starting ($COMPOSE ps)"
