#!/usr/bin/env bash
# Installs, builds and starts nexuskv-server on its embedded RocksDB (./data), listening on
# localhost:50051. Builds only the server and the CLI (the first run on a fresh machine installs
# packages and compiles for several minutes; see README). Prints one line once the server answers.
# Extra arguments go to the server, e.g. scripts/serve.sh --listen=0.0.0.0:50051 --data_dir=/srv/kv
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh --target nexuskv-server --target nexuskv

listen=localhost:50051
data_dir=./data
for arg in "$@"; do  # the server takes the last value of a flag given twice, and so do we
  case $arg in
    --listen=*) listen=${arg#--listen=} ;;
    --data_dir=*) data_dir=${arg#--data_dir=} ;;
  esac
done

build/bin/nexuskv-server --listen=localhost:50051 --data_dir=./data "$@" &
server=$!
trap 'kill -TERM "$server" 2>/dev/null; wait "$server"; exit' INT TERM
# Ready when the port accepts connections (TLS or not, tokens or not).
host=${listen%:*}
port=${listen##*:}
host=${host#[}
host=${host%]}
case $host in "" | 0.0.0.0 | "::") host=localhost ;; esac
for _ in $(seq 1 600); do
  if ! kill -0 "$server" 2>/dev/null; then
    wait "$server"  # it stopped on its own (a bad flag, a locked data directory): its status
    exit
  fi
  if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
    echo "nexuskv-server ready: listening on $listen, data in $data_dir (pid $server);" \
      "stop it with Ctrl-C or kill $server"
    break
  fi
  sleep 0.5
done
wait "$server"
