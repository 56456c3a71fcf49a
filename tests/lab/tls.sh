#!/bin/bash
# Throw-away X.509 credentials for `blockmig migrate --tls-dir` in the lab:
# a fresh CA, a server certificate for the destination host and a client
# certificate for the source, in the file names QEMU's tls-creds-x509 reads.
# Nothing of the machine's own PKI is used or touched; every run makes new keys.
#
#   tls.sh make DIR ADDR    DIR receives ca-cert.pem, server-cert.pem,
#                           server-key.pem, client-cert.pem, client-key.pem
#                           (and the CA's key, ca-key.pem, which QEMU never reads);
#                           the server certificate names ADDR (IP or DNS name)
#
# The extensions are those QEMU's sanity check wants (crypto/tlscredsx509.c):
# the CA may sign certificates, the server's certificate is for TLS servers,
# the client's for TLS clients, both for signing and key encipherment.
set -euo pipefail
cmd=$1; dir=$2
case $cmd in
make)
  addr=$3
  mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
  umask 077
  case $addr in
    *[!0-9.]*) san="DNS:$addr" ;;
    *) san="IP:$addr" ;;
  esac
  key() { openssl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null \
            || openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null; }
  key "$dir/ca-key.pem"
  openssl req -x509 -new -key "$dir/ca-key.pem" -out "$dir/ca-cert.pem" -days 30 \
    -subj "/CN=blockmig lab CA $$" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
  sign() {  # NAME SUBJECT EXTENSIONS
    key "$dir/$1-key.pem"
    openssl req -new -key "$dir/$1-key.pem" -out "$dir/$1.csr" -subj "$2"
    printf '%b' "$3" > "$dir/$1.ext"
    openssl x509 -req -in "$dir/$1.csr" -CA "$dir/ca-cert.pem" -CAkey "$dir/ca-key.pem" \
      -CAcreateserial -out "$dir/$1-cert.pem" -days 30 -extfile "$dir/$1.ext" 2>/dev/null
    rm -f "$dir/$1.csr" "$dir/$1.ext"
  }
  sign server "/CN=$addr" \
    "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=$san\n"
  sign client "/CN=blockmig lab client" \
    "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n"
  rm -f "$dir/ca-cert.srl"
  ;;
*)
  echo "usage: tls.sh make DIR ADDR" >&2; exit 2 ;;
esac
