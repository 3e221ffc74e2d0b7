#!/usr/bin/env bash
# Start libvirtd detached under tini as a child subreaper and return at once; the
# caller waits until it answers. Extra arguments go to libvirtd (e.g. --listen -p FILE).
#
# Why a subreaper: QEMU daemonizes, so each guest's process is an orphan, and when it
# exits it is reaped by the nearest subreaper above it, else PID 1. libvirt's destroy
# waits until the pid is gone, zombie included. The PID 1 of this kind of container
# reaps only every second or two, so every destroy took 1.6-2.0 s; under tini it takes
# 0.2 s (libvirt's first poll). Without tini, plain `libvirtd -d` as before.
set -euo pipefail
log=/var/log/libvirt/libvirtd.log  # where `libvirtd -d` logs when nothing else is set
mkdir -p "$(dirname "$log")"
if command -v tini >/dev/null; then
    setsid tini -s -- libvirtd "$@" </dev/null >>"$log" 2>&1 &
else
    libvirtd -d "$@"
fi
