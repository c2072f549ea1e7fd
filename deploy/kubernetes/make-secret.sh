#!/bin/sh
# Makes the cluster's credentials in KEYS_DIR (once; existing keys are kept) and
# prints the Secret `pycache-keys` holding them, for `kubectl apply -f -`:
#
#   sh deploy/kubernetes/make-secret.sh ./pycache-keys | kubectl apply -f -
#
# KEYS_DIR/peers    `pycache keygen`: the peer plane's CURVE keys, one member per
#                   node pod (pycache-node-0 .. pycache-node-$((NODES-1)))
# KEYS_DIR/clients  `pycache client-keygen`: the client plane's CURVE keys for the
#                   balancer, the edge and the readiness probe, and the HTTP
#                   bearer token file `tokens`
#
# A Secret is flat, so each file's key is its path under KEYS_DIR with "/" as
# "." (peers/members/pycache-node-0.key -> peers.members.pycache-node-0.key);
# the manifests' `items` put them back at their paths. Keep KEYS_DIR (it is
# the only copy of the secrets besides the cluster) and never commit it.
#
# Needs `pycache` (pip install pycache-mesh, or PYCACHE="docker run --rm
# -u $(id -u) -v $PWD:$PWD -w $PWD pycache-mesh pycache") and `kubectl`.
set -eu
keys=${1:?usage: make-secret.sh KEYS_DIR [NODES]}
nodes=${2:-3}
pycache=${PYCACHE:-pycache}

ids=""
i=0
while [ "$i" -lt "$nodes" ]; do
    ids="$ids pycache-node-$i"
    i=$((i + 1))
done
# shellcheck disable=SC2086 # word splitting wanted: the command and the ids
$pycache keygen --keys "$keys/peers" $ids >&2
# shellcheck disable=SC2086
$pycache client-keygen --client-keys "$keys/clients" --token-file "$keys/clients/tokens" \
    balancer edge probe >&2

cd "$keys"
set --
for file in $(find peers clients -type f | sort); do
    set -- "$@" "--from-file=$(printf '%s' "$file" | tr / .)=$file"
done
kubectl create secret generic pycache-keys "$@" --dry-run=client -o yaml
