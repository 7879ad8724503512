#!/bin/sh
# The bridge of a DAQ host's broker to the central one (docs/deployment.md, "Several hosts").
# Sourced by entrypoint.sh when TRACKERDCS_BRIDGE_ADDRESS is set (docker-compose.daq.yml), or run
# alone; writes $MOSQUITTO_RUN_DIR/conf.d/bridge.conf (a tmpfs in the container: it holds the
# bridge's password), which the DAQ host's mosquitto.conf includes.
#
#   TRACKERDCS_BRIDGE_ADDRESS      HOST:PORT of the central broker (its TLS listener, 8883)
#   TRACKERDCS_BRIDGE_NAME         this host's name (daq1): it logs in there as bridge-<name>
#   MQTT_PASSWORD_BRIDGE           that user's password (MQTT_PASSWORD_BRIDGE_<NAME> of central)
#   TRACKERDCS_BRIDGE_PREFIXES     the prefixes of this host's daemons ("/hv1 /lv1")
#   TRACKERDCS_BRIDGE_SUPERVISORS  the safety services supervising them (default "/interlock")
#   TRACKERDCS_BRIDGE_TLS          true (default): TLS, the central CA in
#                                  TRACKERDCS_BRIDGE_CAFILE (default $config/certs/ca.crt)
#   TRACKERDCS_BRIDGE_KEEPALIVE    s between pings: a cut is seen after 1.5 x this (default 10)
#
# What crosses, and how:
#   out (to central)   <prefix>/+ (status, state, availability, response), <prefix>/reply/#, at
#                      QoS 1; while the bridge is down they queue here (local_cleansession
#                      false, persistence, max_queued_* of mosquitto.conf) and follow, in order,
#                      with their own `time`, once it is back
#   in (from central)  <prefix>/cmd/# at QoS 1; central keeps nothing for this bridge
#                      (cleansession true): a command sent while the host is cut off is never
#                      delivered late; <supervisor>/status (retained: the interlock inhibits),
#                      <supervisor>/supervision at QoS 0 (a late heartbeat is worth nothing)
# MQTT 5 across the bridge keeps response topics, correlation data, message expiry and user
# properties; the retain flag is kept as published (a retained command stays refused).
set -eu

config_dir=${config_dir:-${MOSQUITTO_CONFIG_DIR:-/mosquitto/config}}
run_dir=${run_dir:-${MOSQUITTO_RUN_DIR:-/mosquitto/run}}

bridge_die() {
    echo "mosquitto bridge: $*" >&2
    exit 1
}

address=${TRACKERDCS_BRIDGE_ADDRESS:-}
name=${TRACKERDCS_BRIDGE_NAME:-}
prefixes=${TRACKERDCS_BRIDGE_PREFIXES:-}
supervisors=${TRACKERDCS_BRIDGE_SUPERVISORS:-/interlock}
tls=${TRACKERDCS_BRIDGE_TLS:-true}
keepalive=${TRACKERDCS_BRIDGE_KEEPALIVE:-10}
password=${MQTT_PASSWORD_BRIDGE:-}

case "$address" in
    *:[0-9]*) ;;
    *) bridge_die "TRACKERDCS_BRIDGE_ADDRESS must be HOST:PORT of the central broker, got '$address'" ;;
esac
case "$name" in
    "" | *[!a-z0-9-]*) bridge_die "TRACKERDCS_BRIDGE_NAME must be this host's name in a-z, 0-9, -, got '$name'" ;;
esac
[ -n "$prefixes" ] || bridge_die "TRACKERDCS_BRIDGE_PREFIXES is empty: the prefixes of this host's daemons"
for prefix in $prefixes $supervisors; do
    case "$prefix" in
        /*/* | *[+#]* | / | [!/]*) bridge_die "'$prefix' is no prefix (one level, like /hv1)" ;;
    esac
done
case "$password" in
    "" | change-me) bridge_die "MQTT_PASSWORD_BRIDGE is not set (central's MQTT_PASSWORD_BRIDGE_$(echo "$name" | tr 'a-z-' 'A-Z_'))" ;;
esac
case "$keepalive" in
    "" | *[!0-9]*) bridge_die "TRACKERDCS_BRIDGE_KEEPALIVE must be whole seconds, got '$keepalive'" ;;
esac

umask 077
mkdir -p "$run_dir/conf.d"
conf="$run_dir/conf.d/bridge.conf"
{
    echo "# written by bridge.sh at the broker's start: the bridge to the central broker"
    echo "connection trackerdcs-$name"
    echo "address $address"
    echo "remote_clientid trackerdcs-bridge-$name"
    echo "remote_username bridge-$name"
    echo "remote_password $password"
    echo "bridge_protocol_version mqttv50"
    echo "cleansession true"
    echo "local_cleansession false"
    echo "keepalive_interval $keepalive"
    echo "restart_timeout 1 30"
    echo "start_type automatic"
    echo "notifications false"
    echo "try_private true"
    for prefix in $prefixes; do
        echo "topic $prefix/+ out 1"
        echo "topic $prefix/reply/# out 1"
        echo "topic $prefix/cmd/# in 1"
    done
    for prefix in $supervisors; do
        echo "topic $prefix/status in 1"
        echo "topic $prefix/supervision in 0"
    done
} >"$conf.new"
case "$tls" in
    true)
        cafile=${TRACKERDCS_BRIDGE_CAFILE:-$config_dir/certs/ca.crt}
        [ -f "$cafile" ] || bridge_die "no CA certificate of the central broker at $cafile (TRACKERDCS_BRIDGE_CAFILE)"
        mkdir -p "$run_dir/certs"
        cp "$cafile" "$run_dir/certs/bridge-ca.crt"
        {
            echo "bridge_cafile $run_dir/certs/bridge-ca.crt"
            echo "bridge_tls_version tlsv1.2"
            echo "bridge_insecure false"
        } >>"$conf.new"
        ;;
    false) ;;
    *) bridge_die "TRACKERDCS_BRIDGE_TLS must be true or false, got '$tls'" ;;
esac
mv "$conf.new" "$conf"
echo "mosquitto bridge: trackerdcs-$name to $address ($prefixes; supervised by $supervisors)" >&2
