#!/usr/bin/env bash
# Start the local RabbitMQ and PostgreSQL if they are down, enable the RabbitMQ plugins Jobtrail
# relies on, and wait until both answer. (MongoDB is not needed locally: the tests start
# SecantusDB, and `jobtrail serve` defaults to the embedded SQLite log.)
set -euo pipefail

wait_for() {  # wait_for "what" command...
  local what=$1; shift
  for _ in $(seq 1 120); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  echo "services: $what did not come up" >&2
  return 1
}

if [ -n "${JOBTRAIL_SKIP_SERVICES:-}" ]; then exit 0; fi

if command -v rabbitmqctl >/dev/null 2>&1; then
  if ! rabbitmqctl -q status >/dev/null 2>&1; then
    echo "services: starting RabbitMQ" >&2
    rabbitmq-server -detached || true
  fi
  wait_for RabbitMQ rabbitmqctl -q await_startup
  rabbitmq-plugins -q enable rabbitmq_management rabbitmq_consistent_hash_exchange >/dev/null
  wait_for "RabbitMQ management API" curl -sf -u guest:guest http://127.0.0.1:15672/api/overview
fi

if [ -d /etc/postgresql ] && command -v pg_ctlcluster >/dev/null 2>&1; then
  version=$(ls /etc/postgresql | head -n 1)
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    echo "services: starting PostgreSQL $version" >&2
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  fi
  wait_for PostgreSQL pg_isready -q -h 127.0.0.1 -p 5432
fi
