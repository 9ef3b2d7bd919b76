#!/usr/bin/env bash
# Add or update a yl-status broker user.
#   add-user.sh node NODE_ID [DIR]     a GUI node; its username is its node id
#   add-user.sh bridge NAME [DIR]      a bridge (reads all nodes, writes cmd/); NAME = bridge.client_id
#   add-user.sh viewer NAME [DIR]      a status app (reads all nodes)
#   add-user.sh watcher NAME [DIR]     a person or tool watching (reads all nodes); one login
#                                      each: the broker keeps one connection per login
#   add-user.sh upgrade [DIR]          bring an ACL written by an earlier release up to date
# DIR defaults to /etc/mosquitto/yl-status. The password is read from $YL_PASSWORD or prompted.
# Reload the broker afterwards: systemctl reload mosquitto (or kill -HUP its pid).
set -euo pipefail
usage() { sed -n '2,11p' "$0" >&2; exit 2; }
add_acl() {  # add_acl USER LINE...: a new block, or the lines an existing block lacks
  local user=$1 line; shift
  if ! grep -qx "user $user" "$acl_file"; then
    { echo; echo "user $user"; printf '%s\n' "$@"; } >> "$acl_file"
    return 0
  fi
  for line in "$@"; do
    awk -v user="user $user" -v line="$line" '
      $0 == user { inside = 1; next }
      /^user / { inside = 0 }
      inside && $0 == line { found = 1 }
      END { exit !found }' "$acl_file" && continue
    awk -v user="user $user" -v line="$line" '
      { print } $0 == user { print line }' "$acl_file" > "$acl_file.new"
    cat "$acl_file.new" > "$acl_file" && rm -f "$acl_file.new"
    echo "add-user: '$line' added under 'user $user'"
  done
}
if [ "${1:-}" = upgrade ]; then
  # Before 2026-12-08 a bridge read statuses on a second login, NAME-status, and NAME's
  # block read the states only; the bridge now reads both on NAME.
  acl_file=${2:-/etc/mosquitto/yl-status}/acl
  [ -f "$acl_file" ] || { echo "add-user: no ACL at $acl_file" >&2; exit 2; }
  for bridge in $(sed -n 's/^user \(.*\)-status$/\1/p' "$acl_file"); do
    if grep -qx "user $bridge" "$acl_file"; then
      add_acl "$bridge" "topic read yl/ar/nodes/+/status"
    fi
  done
  exit 0
fi
[ $# -ge 2 ] || usage
role=$1 name=$2 dir=${3:-/etc/mosquitto/yl-status}
case $role in node|bridge|viewer|watcher) ;; *) usage ;; esac
max=64
if ! [[ $name =~ ^[A-Za-z0-9][A-Za-z0-9_-]*$ ]] || [ ${#name} -gt $max ]; then
  echo "add-user: invalid name '$name': 1-$max of A-Z a-z 0-9 _ -, starting with a letter or digit" >&2
  exit 2
fi
passwd_file=$dir/passwd acl_file=$dir/acl
password=${YL_PASSWORD:-}
if [ -z "$password" ]; then
  read -r -s -p "password for $name: " password; echo
fi
[ -n "$password" ] || { echo "add-user: empty password" >&2; exit 2; }
# mosquitto started as root reads its files as its own user (mosquitto): the password file
# is that group's to read and nobody else's. Run as another user, it stays that user's.
[ -f "$passwd_file" ] || install -m 600 /dev/null "$passwd_file"
if [ "$(id -u)" = 0 ] && getent group mosquitto >/dev/null; then
  chgrp mosquitto "$passwd_file" && chmod 640 "$passwd_file"
fi
mosquitto_passwd -b "$passwd_file" "$name" "$password"
case $role in
  node)
    add_acl "$name" "topic readwrite yl/ar/nodes/$name/state" \
      "topic write yl/ar/nodes/$name/status" "topic read yl/ar/nodes/$name/cmd/#" ;;
  viewer|watcher)
    add_acl "$name" "topic read yl/ar/nodes/+/state" "topic read yl/ar/nodes/+/status" \
      "topic read yl/ar/bridges/+/state" "topic read yl/ar/bridges/+/instances/+" ;;
  bridge)
    # One session reads both topics (before 2026-12-08 a second login, NAME-status, read the
    # statuses: an existing NAME block gains the status line here).
    add_acl "$name" "topic read yl/ar/nodes/+/state" "topic read yl/ar/nodes/+/status" \
      "topic write yl/ar/nodes/+/cmd/#" "topic readwrite yl/ar/bridges/$name/#" ;;
esac
echo "add-user: $role '$name' written to $passwd_file"
