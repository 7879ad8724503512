#!/usr/bin/env bash
# Back up every named volume of the running stack (deploy/volumes.sh lists them and how):
#   deploy/backup.sh                      -> backups/stack-<UTC time>/
#   deploy/backup.sh /mnt/usb/dcs-0501    (a new or empty directory)
#   COMPOSE="docker-compose -f docker-compose.yml -f ..." deploy/backup.sh
#                                         Debian's v1 (also through podman's socket), other files
#   SERVICES="mosquitto influxdb ..." deploy/backup.sh   a stack without some services: only
#                                         their volumes (deploy/volumes.sh)
# Everything is read from the running containers (docker compose exec), so it needs no volume
# names and no root on the host; InfluxDB and SQLite are copied consistently while they run.
# Not in the backup: .env (the secrets: keep a copy in the lab's password manager) and the
# repository (deploy/lab.yml is copied for reference). Restore: deploy/restore.sh DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/volumes.sh

dest=${1:-backups/stack-$(date -u +%Y%m%dT%H%M%SZ)}
if [ -d "$dest" ] && [ -n "$(ls -A "$dest")" ]; then
    echo "backup: $dest is not empty; give a new directory" >&2
    exit 1
fi
umask 077
mkdir -p "$dest"

# the table on fd 3: the commands in the loop (docker compose exec, run) read stdin
while read -r volume service path method <&3; do
    [ -n "$volume" ] || continue
    runs "$service" || continue
    case "$method" in
        influx)
            # a portable backup of the database, made in the container and streamed out as tar
            in_service "$service" sh -c 'd=$(mktemp -d) && influxd backup -portable -db trackerdcs "$d" >&2 && tar -C "$d" -cf - . && rm -rf "$d"' >"$dest/$volume.tar"
            ;;
        sqlite)
            in_service "$service" python -c 'import sqlite3, sys, tempfile
from trackerdcs.config import load_config
db = load_config("/etc/trackerdcs/lab.yml").alarms.db
with tempfile.NamedTemporaryFile(suffix=".sqlite") as tmp:
    sqlite3.connect(db).backup(sqlite3.connect(tmp.name))
    sys.stdout.buffer.write(open(tmp.name, "rb").read())' >"$dest/$volume.sqlite"
            ;;
        tar)
            in_service "$service" tar -C "$path" -cf - . >"$dest/$volume.tar"
            ;;
        *)
            echo "backup: unknown method $method for $volume" >&2
            exit 1
            ;;
    esac
    echo "backup: $volume ($service:$path, $method) -> $dest/$(ls "$dest" | grep "^$volume\.")"
done 3<<<"$STACK_VOLUMES"

cp deploy/lab.yml "$dest/lab.yml"
{
    echo "made: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "revision: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
    echo "volumes:"
    while read -r volume service _; do
        if [ -n "$volume" ] && runs "$service"; then
            echo "  - $volume"
        fi
    done <<<"$STACK_VOLUMES"
} >"$dest/MANIFEST"
echo "backup: done, $(du -sh "$dest" | cut -f1) in $dest"
