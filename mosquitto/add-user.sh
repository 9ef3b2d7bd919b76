#!/usr/bin/env bash
# Add or update a yl-status broker user.
#   add-user.sh node NODE_ID [DIR]     a GUI node; its username is its node id
#   add-user.sh bridge NAME [DIR]      a bridge (reads all nodes, writes cmd/); NAME = bridge.client_id
#   add-user.sh viewer NAME [DIR]      a status app (reads all nodes)
# DIR defaults to /etc/mosquitto/yl-status. The password is read from $YL_PASSWORD or prompted.
# Reload the broker afterwards: systemctl reload mosquitto (or kill -HUP its pid).
set -euo pipefail
usage() { sed -n '2,7p' "$0" >&2; exit 2; }
[ $# -ge 2 ] || usage
role=$1 name=$2 dir=${3:-/etc/mosquitto/yl-status}
if ! [[ $name =~ ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$ ]]; then
  echo "add-user: invalid name '$name': 1-64 of A-Z a-z 0-9 _ -, starting with a letter or digit" >&2
  exit 2
fi
case $role in node|bridge|viewer) ;; *) usage ;; esac
passwd_file=$dir/passwd acl_file=$dir/acl
password=${YL_PASSWORD:-}
if [ -z "$password" ]; then
  read -r -s -p "password for $name: " password; echo
fi
[ -n "$password" ] || { echo "add-user: empty password" >&2; exit 2; }
[ -f "$passwd_file" ] || install -m 600 /dev/null "$passwd_file"
mosquitto_passwd -b "$passwd_file" "$name" "$password"
if [ "$role" != node ] && ! grep -qx "user $name" "$acl_file"; then
  {
    echo
    echo "user $name"
    echo "topic read yl/ar/nodes/+/state"
    echo "topic read yl/ar/nodes/+/status"
    if [ "$role" = bridge ]; then
      echo "topic write yl/ar/nodes/+/cmd/#"
      echo "topic readwrite yl/ar/bridges/$name/#"
    fi
  } >> "$acl_file"
fi
echo "add-user: $role '$name' written to $passwd_file"
