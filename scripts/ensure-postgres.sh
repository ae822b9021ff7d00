#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers on 127.0.0.1:5432 for the outbox and inbox tests:
# installs Debian's postgresql if it is missing, starts its cluster if it is not running, lets
# local TCP connections in as user postgres without a password (trust, loopback only), and waits
# until it accepts connections. Skipped when TEST_POSTGRES_URL names another server.
set -euo pipefail

case "${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}" in
  *@127.0.0.1*|*@localhost*) ;;
  *) echo "ensure-postgres: TEST_POSTGRES_URL names a remote server; not starting a local one"; exit 0 ;;
esac

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
  echo "ensure-postgres: installing postgresql (Debian package)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi

version=$(ls /etc/postgresql | sort -V | tail -n 1)
hba=/etc/postgresql/$version/main/pg_hba.conf
if ! as_root grep -Eq '^host[[:space:]]+all[[:space:]]+(all|postgres)[[:space:]]+127.0.0.1/32[[:space:]]+trust' "$hba"; then
  # First match wins: the trust line goes on top, for loopback and user postgres only.
  as_root sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
  reload=1
fi

if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "ensure-postgres: starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
elif [ "${reload:-0}" = 1 ]; then
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload
fi
for _ in $(seq 1 60); do
  if pg_isready -q -h 127.0.0.1 -p 5432; then
    exit 0
  fi
  sleep 1
done
echo "ensure-postgres: PostgreSQL did not answer on 127.0.0.1:5432 within 60 s" >&2
exit 1
