#!/usr/bin/env bash
# Restore every named volume from a deploy/backup.sh directory, replacing what they hold:
#   deploy/restore.sh backups/stack-20240501T080000Z
#   COMPOSE="docker compose -f docker-compose.yml -f ..." deploy/restore.sh DIR
# The stack is stopped, each volume emptied and refilled from the backup (as root, owners kept),
# InfluxDB's database dropped and restored with influxd restore -portable, then the whole stack
# started again (influxdb-setup re-creates the continuous query and the users' grants from .env).
# The podman pod (deploy/podman-kube.py): `podman volume import`, see docs/deployment.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/volumes.sh
[ -z "$POD" ] || { echo "restore: not for the podman pod; see docs/deployment.md" >&2; exit 1; }

src=${1:?usage: deploy/restore.sh BACKUP_DIR}
[ -f "$src/MANIFEST" ] || { echo "restore: $src is not a deploy/backup.sh directory" >&2; exit 1; }
read -r -p "restore: replace the stack's data with $src? [y/N] " answer
[ "$answer" = y ] || exit 1

$COMPOSE stop
while read -r volume service path method; do
    [ -n "$volume" ] || continue
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
            until in_service "$service" curl -sf http://127.0.0.1:8086/ping; do sleep 2; done
            in_service "$service" sh -c 'd=$(mktemp -d) && tar -C "$d" -xf - \
                && influx -username "$INFLUXDB_ADMIN_USER" -password "$INFLUXDB_ADMIN_PASSWORD" \
                    -execute "DROP DATABASE trackerdcs" \
                && influxd restore -portable -db trackerdcs "$d" && rm -rf "$d"' <"$src/$volume.tar"
            ;;
    esac
    echo "restore: $volume <- $src"
done <<<"$STACK_VOLUMES"

$COMPOSE up -d
echo "restore: done; the stack is starting (docker compose ps)"
