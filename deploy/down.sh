#!/usr/bin/env bash
# Stop and remove the stack, in an order every engine accepts; arguments go to `down`:
#   deploy/down.sh                        containers and network (the volumes stay)
#   deploy/down.sh -v                     and the named volumes: every piece of state
#   COMPOSE="docker-compose -f docker-compose.yml -f ..." deploy/down.sh -v
# Containers that share another one's network namespace (network_mode: service:X, the dummy
# stack's julabo and sensors in sim-lab's) are removed first: docker-compose v1 removes all
# containers at once, and podman refuses to remove sim-lab while they exist (its `down` would
# stop half way and leave sim-lab and the network behind). With Docker this changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/volumes.sh

# the services with `network_mode: service:...` in the merged configuration
sharing=$($COMPOSE config | awk '
    /^[^ ]/ { in_services = ($0 == "services:") }
    in_services && /^  [^ ]/ { service = $1; sub(/:$/, "", service) }
    in_services && /^    network_mode: service:/ { print service }')
if [ -n "$sharing" ]; then
    # shellcheck disable=SC2086 # service names, one word each
    $COMPOSE rm --stop --force $sharing
fi
$COMPOSE down "$@"
