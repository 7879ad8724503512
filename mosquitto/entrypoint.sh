#!/bin/sh
# Entry point of the Mosquitto container: build the password file from the environment, then
# start the broker. No password is ever written to the repository or to a volume.
#
#   users      the `user` lines of the ACL ($MOSQUITTO_CONFIG_DIR/acl)
#   passwords  MQTT_PASSWORD_<USER> (upper case, `-` as `_`), from .env through docker-compose.yml;
#              a missing, empty or placeholder (`change-me`) password refuses to start
#   output     $MOSQUITTO_RUN_DIR/passwd and a copy of the ACL (a tmpfs in the container), mode
#              0600, owned by `mosquitto` (the broker drops to that user before reading them);
#              TLS files from $MOSQUITTO_CONFIG_DIR/certs are copied the same way when present
#
# Then it runs its arguments (default: mosquitto -c $MOSQUITTO_CONFIG_DIR/mosquitto.conf).
# POSIX sh: the eclipse-mosquitto image is Alpine (busybox). The tests run it as it is.
set -eu

config_dir=${MOSQUITTO_CONFIG_DIR:-/mosquitto/config}
run_dir=${MOSQUITTO_RUN_DIR:-/mosquitto/run}
data_dir=${MOSQUITTO_DATA_DIR:-/mosquitto/data}

die() {
    echo "mosquitto entrypoint: $*" >&2
    exit 1
}

users=$(awk '$1 == "user" { print $2 }' "$config_dir/acl")
[ -n "$users" ] || die "no user in $config_dir/acl"

umask 077
mkdir -p "$run_dir"
new="$run_dir/passwd.new"
rm -f "$new"
: >"$new"
for user in $users; do
    var="MQTT_PASSWORD_$(echo "$user" | tr 'a-z-' 'A-Z_')"
    eval "password=\${$var:-}"
    case "$password" in
        "" | change-me) die "$var is not set (see .env.example and docs/deployment.md)" ;;
    esac
    mosquitto_passwd -b "$new" "$user" "$password" || die "mosquitto_passwd failed for $user"
done
mv "$new" "$run_dir/passwd"
cp "$config_dir/acl" "$run_dir/acl"

# Optional TLS listener (mosquitto/tls/tls.conf): the server's key, certificate and the CA.
if [ -f "$config_dir/certs/server.key" ]; then
    mkdir -p "$run_dir/certs"
    cp "$config_dir/certs/server.key" "$config_dir/certs/server.crt" "$config_dir/certs/ca.crt" \
        "$run_dir/certs/"
fi

# A DAQ host's broker: the bridge to the central broker (bridge.sh, docker-compose.daq.yml).
if [ -n "${TRACKERDCS_BRIDGE_ADDRESS:-}" ]; then
    . "$(dirname "$0")/bridge.sh"
fi

# As root, Mosquitto switches to the `mosquitto` user before it reads these files.
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
    chown -R mosquitto: "$run_dir"
    if [ -d "$data_dir" ]; then
        chown -R mosquitto: "$data_dir"
    fi
fi
echo "mosquitto entrypoint: password file for $(echo $users | wc -w) users" >&2

if [ $# -eq 0 ]; then
    set -- mosquitto -c "$config_dir/mosquitto.conf"
fi
exec "$@"
