#!/usr/bin/env bash
# Makes the cluster's own CA and the certificates its members present to each other:
#   ca.pem (+ ca-key.pem, keep it offline), scheduler.pem, worker.pem, client.pem (+ *-key.pem).
# Dask checks that both ends carry a certificate signed by this CA (mutual TLS), so a machine
# without one can neither join as a worker nor submit work.
#
# usage: deploy/make_tls.sh OUT_DIR [SCHEDULER_HOST_OR_IP ...]
#   DAYS=825 KEY_BITS=3072 deploy/make_tls.sh /etc/cah/tls 203.0.113.7 scheduler.example.org
# Re-running keeps an existing CA (so issued certificates stay valid) and remakes the others.
set -euo pipefail

out="${1:?usage: $0 OUT_DIR [SCHEDULER_HOST_OR_IP ...]}"
shift || true
days="${DAYS:-825}"
bits="${KEY_BITS:-3072}"
mkdir -p "$out"
chmod 700 "$out"
umask 077

if [[ ! -s "$out/ca.pem" || ! -s "$out/ca-key.pem" ]]; then
  openssl req -x509 -new -newkey "rsa:$bits" -nodes -sha256 -days "$days" \
    -subj "/CN=cah-dask-ca" -keyout "$out/ca-key.pem" -out "$out/ca.pem" 2>/dev/null
fi

# Subject alternative names for the scheduler: loopback always, plus every name given.
san="DNS:localhost,IP:127.0.0.1"
for host in "$@"; do
  if [[ "$host" =~ ^[0-9.]+$ || "$host" == *:* ]]; then san="$san,IP:$host"; else san="$san,DNS:$host"; fi
done

issue() {  # issue NAME COMMON_NAME SAN
  local name="$1" cn="$2" names="$3" ext
  ext="$(mktemp)"
  printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=%s\n' \
    "$names" >"$ext"
  openssl req -new -newkey "rsa:$bits" -nodes -sha256 -subj "/CN=$cn" \
    -keyout "$out/$name-key.pem" -out "$out/$name.csr" 2>/dev/null
  openssl x509 -req -in "$out/$name.csr" -CA "$out/ca.pem" -CAkey "$out/ca-key.pem" \
    -CAcreateserial -days "$days" -sha256 -extfile "$ext" -out "$out/$name.pem" 2>/dev/null
  rm -f "$out/$name.csr" "$ext"
}

issue scheduler cah-dask-scheduler "$san"
issue worker cah-dask-worker "DNS:cah-dask-worker"
issue client cah-dask-client "DNS:cah-dask-client"
rm -f "$out/ca.srl"
chmod 600 "$out"/*-key.pem
chmod 644 "$out"/ca.pem "$out"/scheduler.pem "$out"/worker.pem "$out"/client.pem
echo "made TLS files in $out: ca.pem scheduler.pem worker.pem client.pem (+ their -key.pem; keep ca-key.pem offline)"
