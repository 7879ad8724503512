#!/bin/sh
# Make the certificates of the optional TLS listener: a small CA of the lab and a server
# certificate for the broker, signed by it (EC P-256, SHA-256).
#
#   mosquitto/make-certs.sh daq-pc.lab.example 192.0.2.5      names and IPs clients connect to
#   CERT_DIR=/elsewhere mosquitto/make-certs.sh ...            (default: mosquitto/certs, ignored
#                                                               by git)
#
# Writes ca.key (keep it offline once the server certificate is made), ca.crt (give it to the
# clients: `mqtt.tls.ca_file` in the lab YAML, `--cafile` for mosquitto_pub), server.key and
# server.crt. An existing CA is reused, so a renewed server certificate stays valid for clients.
# See docs/deployment.md, "TLS".
set -eu

[ $# -ge 1 ] || { echo "usage: $0 HOSTNAME|IP [HOSTNAME|IP ...]" >&2; exit 2; }
dir=${CERT_DIR:-$(dirname "$0")/certs}
days=${CERT_DAYS:-825}
mkdir -p "$dir"
umask 077

san=""
for name in "$@"; do
    case "$name" in
        *[!0-9.]*) san="${san:+$san,}DNS:$name" ;;
        *) san="${san:+$san,}IP:$name" ;;
    esac
done

if [ ! -f "$dir/ca.key" ]; then
    openssl ecparam -name prime256v1 -genkey -noout -out "$dir/ca.key"
    openssl req -x509 -new -sha256 -key "$dir/ca.key" -days 3650 -subj "/CN=trackerdcs lab CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$dir/ca.crt"
fi

openssl ecparam -name prime256v1 -genkey -noout -out "$dir/server.key"
openssl req -new -sha256 -key "$dir/server.key" -subj "/CN=$1" -out "$dir/server.csr"
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n' \
    "$san" >"$dir/server.ext"
openssl x509 -req -sha256 -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -CAcreateserial -days "$days" -extfile "$dir/server.ext" -out "$dir/server.crt" 2>/dev/null
rm -f "$dir/server.csr" "$dir/server.ext"
chmod 600 "$dir/ca.key" "$dir/server.key"
chmod 644 "$dir/ca.crt" "$dir/server.crt"
echo "made $dir/server.crt for $san (valid $days days), signed by $dir/ca.crt"
