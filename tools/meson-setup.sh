#!/usr/bin/env bash
# tools/meson-setup.sh BUILDDIR [meson options...]
#
# Configure BUILDDIR, or reconfigure it when it already exists. Reconfiguring
# every time is cheap (about a second), applies changed options, and refreshes
# the list of public headers the self-containment check compiles. Wraps are
# never downloaded: on Debian every dependency comes from the system.
set -euo pipefail
builddir=$1
shift
if [ -f "$builddir/meson-private/coredata.dat" ]; then
  meson setup --reconfigure "$builddir" --wrap-mode=nodownload "$@"
else
  meson setup "$builddir" --wrap-mode=nodownload "$@"
fi
