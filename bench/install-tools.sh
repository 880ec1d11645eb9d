#!/usr/bin/env bash
# The Debian packages `make bench` and `make soak` run, installed with apt when missing (with sudo
# when not root): wrk (HTTP load), gcc (builds bench/loadgen_c), golang-go (the Go HTTP
# reference, built into bench/.cache), redis-server and redis-tools (the cluster section's Redis).
set -euo pipefail

missing=()
for pair in wrk:wrk gcc:gcc go:golang-go redis-server:redis-server redis-cli:redis-tools \
        taskset:util-linux; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
echo "bench: installing ${missing[*]} (apt)"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
