#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine with the Rust toolchain.
# Installs what the tests need (Debian packages, the npm packages of the test OIDC
# provider), then runs formatting, lints, unit, property, integration and end-to-end
# tests. Every server the tests need is started and stopped by the tests themselves,
# on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# A fresh clone builds everything once: incremental compilation only costs time there.
if [ "${CI:-}" = "true" ]; then
  export CARGO_INCREMENTAL=0
fi

step "system packages"
missing=()
# softhsm2 and opensc (pkcs11-tool): the PKCS#11 backend's tests. osslsigncode,
# sbverify and mingw-w64 (test PE and EFI files are built, not downloaded): Authenticode.
for pair in openssl:openssl curl:curl node:nodejs npm:npm sqlite3:sqlite3 python3:python3 softhsm2-util:softhsm2 pkcs11-tool:opensc osslsigncode:osslsigncode sbverify:sbsigntool x86_64-w64-mingw32-gcc:gcc-mingw-w64-x86-64; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
done
# PostgreSQL's server: the store, server and replica tests run against a real one.
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
# Debian's Chromium for the browser tests of the web app (driven by playwright-core;
# no browser is downloaded).
[ -x /usr/bin/chromium ] || missing+=(chromium fonts-dejavu-core)
# pkilint (the independent X.509 linter) lives in a virtualenv.
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  missing+=(python3-venv)
fi
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
echo "openssl: $(openssl version)"
echo "node: $(node --version), npm: $(npm --version)"

step "test OIDC provider (npm ci)"
npm ci --prefix tests/oidc-provider --no-audit --no-fund --loglevel=error

step "browser test driver (npm ci: playwright-core, using /usr/bin/chromium)"
npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
echo "chromium: $(/usr/bin/chromium --version 2>/dev/null || echo missing)"

step "X.509 linter (pkilint from PyPI)"
if [ ! -x target/pkilint/bin/lint_pkix_cert ]; then
  mkdir -p target
  python3 -m venv target/pkilint
  target/pkilint/bin/pip install --quiet --disable-pip-version-check pkilint==0.13.3
fi
target/pkilint/bin/lint_pkix_cert --help >/dev/null

step "MCUboot's imgtool (from PyPI)"
if [ ! -x target/imgtool/bin/imgtool ]; then
  mkdir -p target
  python3 -m venv target/imgtool
  target/imgtool/bin/pip install --quiet --disable-pip-version-check imgtool==2.5.0
fi
target/imgtool/bin/imgtool version

step "cargo fmt --check"
cargo fmt --all -- --check

step "unused dependencies (cargo-machete from crates.io)"
command -v cargo-machete >/dev/null 2>&1 || cargo install --locked --quiet cargo-machete@0.9.2
cargo machete

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "PostgreSQL test server (scripts/postgres.sh, 127.0.0.1, unprivileged)"
pgdir=$(mktemp -d /tmp/influxion-test-pg.XXXXXX)
# Stopped and removed however the run ends.
trap 'scripts/postgres.sh stop "$pgdir/data"; rm -rf "$pgdir"' EXIT
# The server runs as an unprivileged user, who must reach its data directory.
chmod 755 "$pgdir"
pgport=${INFLUXION_TEST_POSTGRES_PORT:-55433}
INFLUXION_TEST_POSTGRES_URL=$(scripts/postgres.sh start "$pgdir/data" "$pgport")
export INFLUXION_TEST_POSTGRES_URL
echo "postgres: $INFLUXION_TEST_POSTGRES_URL"

step "cargo test (unit, property, integration, end-to-end)"
# A test whose tool is missing fails (in CI and in a newcomer's run alike); nothing skips.
cargo test --workspace

step "cargo test: the server suite again, on PostgreSQL"
# Selected with --workspace and the test targets' names, not `-p influxion-server`:
# building one package alone unifies features differently and would compile every
# dependency a second time (twice the disk, which a CI runner does not have).
server_tests=()
for f in crates/server/tests/*.rs; do
  server_tests+=(--test "$(basename "$f" .rs)")
done
INFLUXION_TEST_DATABASE=postgres cargo test --workspace "${server_tests[@]}"
echo "disk: $(df -h --output=avail . | tail -1) free, target $(du -sh target 2>/dev/null | cut -f1)"

step "oidc-provider smoke test"
tests/oidc-provider/smoke.sh

echo
echo "all tests passed"
