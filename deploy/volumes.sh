# The named volumes that hold state, and how each is saved (sourced by backup.sh and restore.sh;
# tests/test_deployment.py checks that it lists every volume of docker-compose.yml).
#   volume          service    path in the container   method
#   influx          influxd backup -portable / restore -portable of the database (online)
#   sqlite          SQLite's online backup API (a consistent copy while the daemon writes)
#   tar             a tar of the directory (files written whole: retained messages, settings)
STACK_VOLUMES="
influxdb-data   influxdb   /var/lib/influxdb      influx
alarms-data     alarms     /var/lib/trackerdcs    sqlite
ivscan-data     dcs        /var/lib/trackerdcs    tar
mosquitto-data  mosquitto  /mosquitto/data        tar
grafana-data    grafana    /var/lib/grafana       tar
nodered-data    nodered    /data                  tar
"
# The compose command: docker compose (v2), or docker-compose (v1, also through podman's socket),
# with the files the stack was started with, e.g. COMPOSE="docker compose -f docker-compose.yml -f ...".
COMPOSE=${COMPOSE:-docker compose}
# The services the stack runs (default: every service of the compose files). A lab that leaves
# one out (say SERVICES="mosquitto influxdb ...", without grafana) gets the volumes of the others
# saved and restored, and only its services started again.
SERVICES=${SERVICES:-}

# runs SERVICE: whether the stack runs SERVICE (always, when SERVICES is empty)
runs() {
    [ -z "$SERVICES" ] || [[ " $SERVICES " == *" $1 "* ]]
}

# in_service SERVICE CMD...: run CMD in the running container of SERVICE, stdin/stdout attached
in_service() {
    local service=$1
    shift
    $COMPOSE exec -T "$service" "$@"
}
