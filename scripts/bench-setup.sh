#!/usr/bin/env bash
# Install what bench/gateway.py drives besides Python: nginx (the HTTP ceiling) and wrk (the load
# generator), from Debian's packages, only if they are missing. `apt-get update` runs only when the
# install fails with the package lists at hand. The benchmark starts its own nginx on a private
# config; Debian's package may start the system service on port 80, which is stopped again here if
# it was not running before.
set -euo pipefail

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)

if [ ${#missing[@]} -eq 0 ]; then
  echo "bench-setup: nginx and wrk are installed"
  exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "bench-setup: run as root to install ${missing[*]}" >&2; exit 1; }
  SUDO=(sudo)
fi

nginx_was_running=0
if pgrep -x nginx >/dev/null 2>&1; then nginx_was_running=1; fi

export DEBIAN_FRONTEND=noninteractive
echo "bench-setup: installing ${missing[*]}"
if ! "${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}"; then
  echo "bench-setup: install failed; updating the package lists and retrying"
  "${SUDO[@]}" apt-get update
  "${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
fi

# The package's post-install may have started the system nginx: leave things as they were.
if [ "$nginx_was_running" -eq 0 ] && pgrep -x nginx >/dev/null 2>&1; then
  echo "bench-setup: stopping the system nginx the package started"
  "${SUDO[@]}" service nginx stop >/dev/null 2>&1 || "${SUDO[@]}" nginx -s stop || true
  for _ in $(seq 1 50); do pgrep -x nginx >/dev/null 2>&1 || break; sleep 0.1; done
fi

command -v wrk >/dev/null 2>&1 || { echo "bench-setup: wrk is still missing" >&2; exit 1; }
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || {
  echo "bench-setup: nginx is still missing" >&2
  exit 1
}
echo "bench-setup: done"
