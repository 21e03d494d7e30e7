#!/usr/bin/env bash
# Install everything the tests need, then run the whole suite.
#
#   bash scripts/test.sh [pytest arguments]
#
# Debian packages (only those missing): restic (the compatibility oracle), rclone (REST
# server), openssh (SFTP server), Ceph's radosgw/mon/osd (the real S3 server), attr, time.
# Python packages: cairn itself (editable, builds the C chunker) with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi

missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$2"); }
need restic restic
need rclone rclone
need sshd openssh-server
need ssh openssh-client
need radosgw radosgw
need ceph-mon ceph-mon
need ceph-osd ceph-osd
need setfattr attr
need uuidgen uuid-runtime
[ -x /usr/bin/time ] || missing+=(time)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip install -q --disable-pip-version-check -e '.[test]'
exec "$PYTHON" -m pytest -q -p no:cacheprovider "$@"
