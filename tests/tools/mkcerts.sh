#!/usr/bin/env bash
# Generate the throw-away PKI used by apilb's tests and demo.
#
# Usage: mkcerts.sh DIR
#
# Writes into DIR (created if missing; every file is regenerated on each run):
#   ca.crt ca.key                  test CA, CN=apilb-test-ca
#   server.crt server.key          CN=kube-apiserver, serverAuth, SANs for the
#                                  in-cluster names, localhost, 127.0.0.1-9, ::1
#   client.crt client.key          CN=kubernetes-admin, O=system:masters, clientAuth
#   other-ca.crt other-ca.key      an unrelated CA (negative tests)
#   other-client.crt other-client.key  a client certificate from other-ca
#
# EC P-256 keys, openssl CLI only (OpenSSL 3.0). Quiet on success; on failure
# prints openssl's output and exits non-zero.
set -euo pipefail

if [[ $# -ne 1 || -z $1 ]]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi

dir=$1
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Run openssl, keeping its chatter (e.g. "Certificate request self-signature ok")
# unless it fails.
ossl() {
    if ! openssl "$@" >"$work/log" 2>&1; then
        echo "mkcerts: openssl $1 failed:" >&2
        cat "$work/log" >&2
        exit 1
    fi
}

# A random positive 63-bit serial, so re-issued certs never collide in a client's cache.
serial() {
    echo "0x$(openssl rand -hex 8 | sed 's/^./7/')"
}

newkey() { # FILE
    ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"
    chmod 600 "$1"
}

make_ca() { # NAME CN
    local name=$1 cn=$2
    newkey "$work/$name.key"
    cat >"$work/$name.cnf" <<EOF
[req]
distinguished_name = dn
x509_extensions = v3_ca
[dn]
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
EOF
    ossl req -new -x509 -key "$work/$name.key" -subj "/CN=$cn" -days 3 -sha256 \
        -set_serial "$(serial)" -config "$work/$name.cnf" -out "$work/$name.crt"
}

issue() { # NAME CA SUBJECT EXTFILE
    local name=$1 ca=$2 subj=$3 ext=$4
    newkey "$work/$name.key"
    ossl req -new -key "$work/$name.key" -subj "$subj" -config /dev/null -out "$work/$name.csr"
    ossl x509 -req -in "$work/$name.csr" -CA "$work/$ca.crt" -CAkey "$work/$ca.key" \
        -set_serial "$(serial)" -days 2 -sha256 -extfile "$ext" -out "$work/$name.crt"
}

make_ca ca apilb-test-ca
make_ca other-ca apilb-other-ca

sans="DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:localhost"
for i in 1 2 3 4 5 6 7 8 9; do
    sans+=",IP:127.0.0.$i"
done
sans+=",IP:::1"

cat >"$work/server.ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = $sans
EOF

cat >"$work/client.ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF

issue server ca "/CN=kube-apiserver" "$work/server.ext"
# CN first, O second: RFC 2253 form (last RDN first) is then
# "O=system:masters,CN=kubernetes-admin", which /whoami reports.
issue client ca "/CN=kubernetes-admin/O=system:masters" "$work/client.ext"
issue other-client other-ca "/CN=kubernetes-admin/O=system:masters" "$work/client.ext"

# Sanity-check the chains before publishing anything.
ossl verify -CAfile "$work/ca.crt" -purpose sslserver "$work/server.crt"
ossl verify -CAfile "$work/ca.crt" -purpose sslclient "$work/client.crt"
ossl verify -CAfile "$work/other-ca.crt" -purpose sslclient "$work/other-client.crt"

for f in ca server client other-ca other-client; do
    install -m 0644 "$work/$f.crt" "$dir/$f.crt"
    install -m 0600 "$work/$f.key" "$dir/$f.key"
done
