#!/usr/bin/env bash
# Add or update a yl-status broker user.
#   add-user.sh node NODE_ID [DIR]     a GUI node; its username is its node id
#   add-user.sh bridge NAME [DIR]      a bridge (reads all nodes, writes cmd/); NAME = bridge.client_id
#                                      (also adds NAME-status, the bridge's status session)
#   add-user.sh viewer NAME [DIR]      a status app (reads all nodes)
#   add-user.sh watcher NAME [DIR]     a person or tool watching (reads all nodes); one login
#                                      each: the broker keeps one connection per login
# DIR defaults to /etc/mosquitto/yl-status. The password is read from $YL_PASSWORD or prompted.
# Reload the broker afterwards: systemctl reload mosquitto (or kill -HUP its pid).
set -euo pipefail
usage() { sed -n '2,10p' "$0" >&2; exit 2; }
[ $# -ge 2 ] || usage
role=$1 name=$2 dir=${3:-/etc/mosquitto/yl-status}
case $role in node|bridge|viewer|watcher) ;; *) usage ;; esac
max=64; [ "$role" = bridge ] && max=57   # the bridge also uses NAME-status
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
add_acl() {  # add_acl USER LINE...
  local user=$1; shift
  grep -qx "user $user" "$acl_file" && return 0
  { echo; echo "user $user"; printf '%s\n' "$@"; } >> "$acl_file"
}
case $role in
  node)
    add_acl "$name" "topic readwrite yl/ar/nodes/$name/state" \
      "topic write yl/ar/nodes/$name/status" "topic read yl/ar/nodes/$name/cmd/#" ;;
  viewer|watcher)
    add_acl "$name" "topic read yl/ar/nodes/+/state" "topic read yl/ar/nodes/+/status" \
      "topic read yl/ar/bridges/+/state" "topic read yl/ar/bridges/+/instances/+" ;;
  bridge)
    # The bridge's second session (statuses) logs in as NAME-status with the same password.
    mosquitto_passwd -b "$passwd_file" "$name-status" "$password"
    add_acl "$name" "topic read yl/ar/nodes/+/state" "topic write yl/ar/nodes/+/cmd/#" \
      "topic readwrite yl/ar/bridges/$name/#"
    add_acl "$name-status" "topic read yl/ar/nodes/+/status" ;;
esac
echo "add-user: $role '$name' written to $passwd_file"
