#!/bin/sh
# The steps of the local compose consortium (compose.yaml), one role per container:
#
#   consortium.sh init                 as root: make the shared folder writable by the parties
#   consortium.sh party ID ROLE        a party: keys, (coordinator) the policy, its signature,
#                                      then ROLE's work: "provider" uploads, "recipient" fetches
#   consortium.sh enclave              wait for the fully signed policy, then serve it
#
# Folders (environment, with the containers' defaults): CONSORTIUM (shared, public material
# only: public keys, the policy, signatures), PARTY_HOME (this party's own: key, data, state),
# ENCLAVE (HOST:PORT). Every wait is bounded; any failed step exits non-zero.
set -eu

CONSORTIUM=${CONSORTIUM:-/consortium}
PARTY_HOME=${PARTY_HOME:-/home/party}
ENCLAVE=${ENCLAVE:-enclave:7443}
PARTIES=${PARTIES:-"hospital-a hospital-b research-lab"}
COORDINATOR=${COORDINATOR:-hospital-a}
HERE=$(cd "$(dirname "$0")" && pwd)
POLICY="$CONSORTIUM/policy.signed.json"

say() { echo "[$ROLE_NAME] $*"; }

wait_for() {  # wait_for WHAT TRIES CMD...: run CMD every 2 s until it succeeds
  what=$1 tries=$2
  shift 2
  n=0
  until "$@" >/dev/null 2>&1; do
    n=$((n + 1))
    if [ "$n" -ge "$tries" ]; then
      say "gave up waiting for $what"
      "$@" || true
      exit 1
    fi
    sleep 2
  done
}

all_public_keys() {
  for p in $PARTIES; do [ -f "$CONSORTIUM/pub/$p.pub.json" ] || return 1; done
}

write_policy() {  # the coordinator fills the template (python: JSON keys, no sed quoting)
  python - "$HERE/policy.toml.in" "$CONSORTIUM" "$(cctrain measure)" $PARTIES <<'PY'
import datetime, json, os, sys
template, consortium, measurement, *parties = sys.argv[1:]
text = open(template).read()
for pid in parties:
    pub = json.load(open(f"{consortium}/pub/{pid}.pub.json"))
    text = text.replace(f"@{pid}.signing@", pub["signing_key"])
    text = text.replace(f"@{pid}.hpke@", pub.get("hpke_key", ""))
expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=7)
text = text.replace("@EXPIRES@", expires.strftime("%Y-%m-%dT%H:%M:%SZ"))
text = text.replace("@MEASUREMENT@", measurement)
tmp = f"{consortium}/policy.toml.tmp"
open(tmp, "w").write(text)
os.replace(tmp, f"{consortium}/policy.toml")
PY
}

make_shard() {  # a synthetic shard (8 features, 2 classes), different for each party
  python - "$1" "$2" <<'PY'
import sys, zlib
import numpy as np
out, pid = sys.argv[1:]
rng = np.random.default_rng(zlib.crc32(pid.encode()))
w = np.linspace(-1.0, 1.0, 8, dtype=np.float32)
x = rng.normal(size=(400, 8)).astype(np.float32)
y = (x @ w + 0.3 * rng.normal(size=400) > 0).astype(np.int64)
np.savez(out, features=x, labels=y)
PY
}

party() {
  pid=$1 role=$2
  ROLE_NAME=$pid
  cd "$PARTY_HOME"
  if [ ! -f "$pid.key" ]; then
    say "making my keys (cctrain keygen)"
    cctrain keygen "$pid" --out .
  fi
  mkdir -p "$CONSORTIUM/pub"
  cp "$pid.pub.json" "$CONSORTIUM/pub/$pid.pub.json.tmp"
  mv "$CONSORTIUM/pub/$pid.pub.json.tmp" "$CONSORTIUM/pub/$pid.pub.json"

  if [ "$pid" = "$COORDINATOR" ] && [ ! -f "$CONSORTIUM/policy.toml" ]; then
    wait_for "every party's public key" 150 all_public_keys
    say "writing the policy with every key and the enclave measurement (cctrain measure)"
    write_policy
  fi
  wait_for "the policy" 150 test -f "$CONSORTIUM/policy.toml"
  # A party signs what it checked (here only the strict validation; a real party reads it).
  cctrain policy check "$CONSORTIUM/policy.toml"
  say "signing the policy (cctrain policy sign)"
  # One signer at a time: every signature is added to the same envelope.
  python - "$CONSORTIUM/sign.lock" cctrain policy sign "$CONSORTIUM/policy.toml" \
      --key "$pid.key" --envelope "$POLICY" <<'PY'
import fcntl, subprocess, sys
with open(sys.argv[1], "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    sys.exit(subprocess.run(sys.argv[2:]).returncode)
PY
  wait_for "every signature" 150 cctrain policy verify "$POLICY"
  session="--enclave $ENCLAVE --policy $POLICY --key $pid.key --allow-simulated"
  wait_for "the enclave at $ENCLAVE" 150 cctrain status $session

  case "$role" in
    provider)
      [ -f "$pid.npz" ] || make_shard "$pid.npz" "$pid"
      say "attesting the enclave and uploading my shard (cctrain upload)"
      cctrain upload "$pid.npz" $session --no-progress --receipt-out receipt.json
      cctrain status $session
      ;;
    recipient)
      say "waiting for the release, then fetching, verifying and unsealing it (cctrain release fetch)"
      wait_for "the release" 300 cctrain release fetch $session --out release
      cctrain release verify release/release.json --policy "$POLICY" --key "$pid.key" \
        --allow-simulated
      cctrain audit $session --save journal.log
      say "done: the model is in $PARTY_HOME/release"
      ;;
    *)
      echo "role: got '$role', want provider or recipient" >&2
      exit 2
      ;;
  esac
}

case "${1:-}" in
  init)
    mkdir -p "$CONSORTIUM"
    chown "${PARTY_UID:-10002}:${PARTY_UID:-10002}" "$CONSORTIUM"
    chmod 0755 "$CONSORTIUM"
    ;;
  party)
    [ $# -eq 3 ] || { echo "usage: consortium.sh party ID provider|recipient" >&2; exit 2; }
    party "$2" "$3"
    ;;
  enclave)
    ROLE_NAME=enclave
    wait_for "every signature" 300 cctrain policy verify "$POLICY"
    say "every party signed: serving the policy on the simulated TEE"
    exec cctrain-enclave serve --policy "$POLICY" --state-dir "${STATE_DIR:-/var/lib/cctrain}" \
      --host "${ENCLAVE_HOST:-0.0.0.0}" --port "${ENCLAVE_PORT:-7443}" --platform simulated
    ;;
  *)
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
