#!/usr/bin/env bash
# tools/run-tests.sh [meson test args...] — build fleetdl with tests and run them.
#
#   ./tools/run-tests.sh                     all suites
#   ./tools/run-tests.sh --suite unit        one suite (unit, integration, slow)
#   ./tools/run-tests.sh --list              list the tests
#   CI=true ./tools/run-tests.sh             also turn warnings into errors
#
# Exits non-zero when the build or any test fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

werror=false
[ "${CI:-}" = true ] && werror=true

./tools/deps.sh
./tools/meson-setup.sh build-test --buildtype=debugoptimized \
  -Dtests=true -Dexamples=true -Dbenchmarks=false -Dwerror="$werror"
meson compile -C build-test -j2
meson test -C build-test --print-errorlogs --num-processes 2 "$@"
