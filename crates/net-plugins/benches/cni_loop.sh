#!/bin/bash
# One plugin's ADD+DEL pairs from a shell loop, exactly as a runtime invokes an IPAM plugin:
# the network configuration on stdin, the parameters in CNI_* variables, a new process each.
# usage: cni_loop.sh PLUGIN CONF_FILE ROUNDS CONTAINER_PREFIX
set -eu
plugin=$1 conf=$2 rounds=$3 prefix=$4
for ((i = 0; i < rounds; i++)); do
    CNI_COMMAND=ADD CNI_CONTAINERID="$prefix$i" CNI_NETNS=/var/run/netns/bench CNI_IFNAME=eth0 \
        CNI_PATH=/usr/lib/cni "$plugin" < "$conf" > /dev/null
    CNI_COMMAND=DEL CNI_CONTAINERID="$prefix$i" CNI_NETNS=/var/run/netns/bench CNI_IFNAME=eth0 \
        CNI_PATH=/usr/lib/cni "$plugin" < "$conf" > /dev/null
done
