#!/bin/bash
# As the official image's entry point: `-flag ...` means `influxd -flag ...`; before influxd
# starts, /init-influxdb.sh does the first-start set-up.
set -e
if [ "${1:0:1}" = - ]; then
    set -- influxd "$@"
fi
if [ "$1" = influxd ]; then
    /init-influxdb.sh "${@:2}"
fi
exec "$@"
