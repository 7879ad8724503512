# The named volumes that hold state, and how each is saved (sourced by backup.sh and restore.sh;
# tests/test_deployment.py checks that it lists every volume of docker-compose.yml).
#   volume          service    path in the container   method
#   influx          influxd backup -portable / restore -portable of the database (online)
#   sqlite          SQLite's online backup API (a consistent copy while the daemon writes)
#   tar             a tar of the directory (files written whole: retained messages, settings)
STACK_VOLUMES="
influxdb-data   influxdb   /var/lib/influxdb      influx
alarms-data     alarms     /var/lib/trackerdcs    sqlite
mosquitto-data  mosquitto  /mosquitto/data        tar
grafana-data    grafana    /var/lib/grafana       tar
nodered-data    nodered    /data                  tar
"
# The compose command: docker compose (v2), docker-compose (v1) or podman-compose, with the
# files the stack was started with, e.g. COMPOSE="docker compose -f docker-compose.yml -f ...".
# For the podman pod of deploy/podman-kube.py: POD=trackerdcs (containers <pod>-<service>).
COMPOSE=${COMPOSE:-docker compose}
POD=${POD:-}

# in_service SERVICE CMD...: run CMD in the running container of SERVICE, stdin/stdout attached
in_service() {
    local service=$1
    shift
    if [ -n "$POD" ]; then
        podman exec -i "$POD-$service" "$@"
    else
        $COMPOSE exec -T "$service" "$@"
    fi
}
