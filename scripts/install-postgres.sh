#!/usr/bin/env bash
# PostgreSQL's server programs (initdb, pg_ctl) for the team tracking server (`bilstm-exp server`,
# `make server`) and its tests; the Makefile's `postgres` and `server` targets and .ci/run call it.
#
#   scripts/install-postgres.sh      # prints the folder that holds initdb; exit 0 when it is there
#
# Idempotent: when initdb is already installed it changes nothing. It looks where the server looks
# ($BILSTM_EXP_PG_BIN, `pg_config --bindir`, Debian's /usr/lib/postgresql/<version>/bin); when none has
# initdb and we are root with apt-get, it installs Debian's `postgresql` package (which also creates the
# `postgres` system user PostgreSQL runs as under root). Otherwise it exits 1 and says what to do.
set -euo pipefail

pg_bin() {
    local folder
    for folder in "${BILSTM_EXP_PG_BIN:-}" "$(pg_config --bindir 2>/dev/null || true)" \
                  $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -n "$folder" ] && [ -x "$folder/initdb" ] && [ -x "$folder/pg_ctl" ]; then
            echo "$folder"
            return 0
        fi
    done
    return 1
}

if pg_bin; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "install-postgres.sh: PostgreSQL's initdb is not installed, and installing it needs root and apt-get." \
         "Fix: as root run \`apt-get install postgresql\` (Debian/Ubuntu), or install PostgreSQL's server" \
         "programs yourself and set BILSTM_EXP_PG_BIN to the folder that holds initdb" >&2
    exit 1
fi
echo "install-postgres.sh: installing Debian's postgresql (apt-get)" >&2
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }; then
    echo "install-postgres.sh: apt-get could not install postgresql (see its messages above)." \
         "Fix: check the package sources and the network, then run this script again" >&2
    exit 1
fi
pg_bin || { echo "install-postgres.sh: postgresql is installed but no initdb was found." \
                 "Fix: set BILSTM_EXP_PG_BIN to the folder that holds initdb" >&2; exit 1; }
