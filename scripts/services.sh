#!/usr/bin/env bash
# Install (when missing) and start what the tests need: RabbitMQ, virtlogd and
# libvirtd with QEMU. Idempotent: safe to run on a machine where they already run.
set -euo pipefail

need_pkgs=()
# e2fsprogs, dosfstools, util-linux: ephemeral and swap disks (mkfs, mkswap, losetup);
# util-linux and iproute2 also make the second libvirt host of the migration tests
# (unshare, nsenter; ip netns, veth, tc, ss);
# libvirt-clients and libxml2-utils: virt-xml-validate (and the xmllint it runs) judge
# every domain XML the tests make; qemu-utils: qemu-img and qemu-nbd;
# tmux: the tests drive compute-worker top in it and read its screen; systemd:
# systemd-analyze and systemd-tmpfiles check the unit and the tmpfiles entry;
# tini: libvirtd's subreaper (scripts/libvirtd.sh says why).
for p in rabbitmq-server systemd libvirt-daemon-system libvirt-clients libxml2-utils libvirt-dev pkg-config qemu-system-x86 qemu-utils e2fsprogs dosfstools util-linux iproute2 tmux tini python3-venv; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$p")
done
if ((${#need_pkgs[@]})); then
    echo "services: installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # policy-rc.d stops the packages' own init scripts: this script starts
    # the daemons itself, in the way this container allows.
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt-get install -y -q --no-install-recommends "${need_pkgs[@]}"
    rm -f /usr/sbin/policy-rc.d
fi

# RabbitMQ
if ! rabbitmq-diagnostics -q check_running >/dev/null 2>&1; then
    if ! rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
        echo "services: starting rabbitmq-server"
        rabbitmq-server -detached
    fi
    # ping answers as soon as the Erlang node is up; await_startup waits for
    # the broker application itself.
    for _ in $(seq 1 60); do
        rabbitmq-diagnostics -q ping >/dev/null 2>&1 && break
        sleep 1
    done
    rabbitmqctl -q await_startup --timeout 120
fi
echo "services: rabbitmq is up"

# libvirtd: this container has no user namespaces for QEMU and no
# security driver, so QEMU runs as root without confinement.
conf=/etc/libvirt/qemu.conf
set_conf() {
    local key=$1 value=$2
    if grep -qE "^\s*${key}\s*=" "$conf"; then
        sed -i -E "s|^\s*${key}\s*=.*|${key} = ${value}|" "$conf"
    else
        echo "${key} = ${value}" >>"$conf"
    fi
}
set_conf user '"root"'
set_conf group '"root"'
set_conf security_driver '"none"'
set_conf namespaces '[]'

if ! virsh -c qemu:///system version >/dev/null 2>&1; then
    echo "services: starting virtlogd and libvirtd"
    pgrep -x virtlogd >/dev/null || virtlogd -d
    pgrep -x libvirtd >/dev/null || bash "$(dirname "$0")/libvirtd.sh"
    for _ in $(seq 1 60); do
        virsh -c qemu:///system version >/dev/null 2>&1 && break
        sleep 0.5
    done
    virsh -c qemu:///system version >/dev/null
fi
echo "services: libvirtd is up ($(virsh -c qemu:///system version | grep -i 'running hypervisor' || true))"
for pid in $(pgrep -x libvirtd); do
    parent=$(ps -o comm= -p "$(ps -o ppid= -p "$pid" | tr -d ' ')" 2>/dev/null || true)
    if [[ $parent != tini ]]; then
        echo "services: note: libvirtd $pid was started without a subreaper; each QEMU" \
            "destroy may wait 2 s for PID 1 here (see scripts/libvirtd.sh)"
    fi
done
