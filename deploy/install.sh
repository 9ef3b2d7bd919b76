#!/usr/bin/env bash
# Install yl-status's services on a Debian host, as root:
#   deploy/install.sh [--root DIR] [--broker stock|own|none] [--package SPEC]
# It makes what the units need: the system user yl-status, the virtualenv
# /opt/yl-status/.venv with the package, the one config file /etc/yl-status/yl-status.yaml
# (from config/monitor_config.example.yaml, kept if it exists), the units in
# /etc/systemd/system, and the broker's settings:
#   stock  (default when /etc/mosquitto/mosquitto.conf exists) Debian's mosquitto package:
#          conf.d/yl-status.conf into /etc/mosquitto/conf.d/, its own config left as it is
#   own    a broker of our own: /etc/mosquitto/yl-status/mosquitto.conf (mosquitto -c ...)
#   none   the broker is someone else's (docs/operations.md)
# Both broker kinds keep logins and the ACL in /etc/mosquitto/yl-status/ (add-user.sh).
# --root DIR installs into DIR instead of / (to check what it makes): no user is created,
# systemd is not told, nothing is started.
# --package SPEC: what pip installs (default: this repository).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root="" broker="" package="$here"
while [ $# -gt 0 ]; do
  case $1 in
    --root) root=${2%/}; shift 2 ;;
    --broker) broker=$2; shift 2 ;;
    --package) package=$2; shift 2 ;;
    *) sed -n '2,17p' "$0" >&2; exit 2 ;;
  esac
done
if [ -z "$broker" ]; then
  broker=none
  [ -f "$root/etc/mosquitto/mosquitto.conf" ] || [ -z "$root" -a -f /etc/mosquitto/mosquitto.conf ] \
    && broker=stock
fi
case $broker in stock|own|none) ;; *) echo "install: --broker is stock, own or none" >&2; exit 2 ;; esac
if [ -z "$root" ] && [ "$(id -u)" != 0 ]; then
  echo "install: run as root (or with --root DIR)" >&2
  exit 2
fi
say() { echo "install: $*"; }

if [ -z "$root" ] && ! getent passwd yl-status >/dev/null; then
  useradd --system --home-dir /var/lib/yl-status --no-create-home --shell /usr/sbin/nologin \
    --user-group yl-status
  say "user yl-status created"
fi
group=root
[ -z "$root" ] && group=yl-status

venv=$root/opt/yl-status/.venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade "$package"
say "package installed in $venv"

install -d -m 0755 "$root/etc/yl-status"
config=$root/etc/yl-status/yl-status.yaml
if [ ! -f "$config" ]; then
  install -m 0640 -g "$group" "$here/config/monitor_config.example.yaml" "$config"
  say "$config written from the example: set the monitor's URL and the logins"
else
  say "$config kept"
fi

install -d -m 0755 "$root/etc/systemd/system"
for unit in yl-status-bridge.service yl-status-serve.service; do
  install -m 0644 "$here/deploy/$unit" "$root/etc/systemd/system/$unit"
done
say "units yl-status-bridge and yl-status-serve in $root/etc/systemd/system"

if [ "$broker" != none ]; then
  shipped=$("$venv/bin/python" -m yl_status.dev_broker --where)
  dir=$root/etc/mosquitto/yl-status
  install -d -m 0755 "$dir" "$dir/conf.d"
  install -m 0755 "$shipped/add-user.sh" "$dir/add-user.sh"
  install -m 0644 "$shipped/tls.conf" "$dir/tls.conf"
  if [ -f "$dir/acl" ]; then
    "$dir/add-user.sh" upgrade "$dir"  # an ACL of an earlier release, brought up to date
  else
    install -m 0644 "$shipped/acl" "$dir/acl"
  fi
  if [ ! -f "$dir/passwd" ]; then
    install -m 0600 /dev/null "$dir/passwd"
    if [ -z "$root" ] && getent group mosquitto >/dev/null; then
      chgrp mosquitto "$dir/passwd" && chmod 0640 "$dir/passwd"
    fi
  fi
  if [ "$broker" = stock ]; then
    install -d -m 0755 "$root/etc/mosquitto/conf.d"
    install -m 0644 "$shipped/conf.d/yl-status.conf" "$root/etc/mosquitto/conf.d/yl-status.conf"
    say "broker: $root/etc/mosquitto/conf.d/yl-status.conf beside the package's config"
  else
    install -m 0644 "$shipped/mosquitto.conf" "$dir/mosquitto.conf"
    install -m 0644 "$shipped/conf.d/yl-status.conf" "$dir/conf.d/yl-status.conf"
    say "broker: $dir/mosquitto.conf (start it with mosquitto -c $dir/mosquitto.conf)"
  fi
  say "add logins with $dir/add-user.sh node|bridge|viewer NAME, then reload mosquitto"
fi

if [ -z "$root" ]; then
  systemctl daemon-reload
  say "then: systemctl enable --now yl-status-bridge yl-status-serve"
fi
