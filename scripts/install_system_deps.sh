#!/usr/bin/env bash
# Installs the Debian packages the Fiji-macro tests need: ImageJ 1.x (ij.jar), Xvfb + xauth (a
# virtual screen for xvfb-run) and a JDK (javac compiles the headless macro runner and the
# DeepImageJ stand-in, see fiji_macros/README.md). Does nothing when they are already there.
# Needs root (or sudo) only when something is missing. Debian/Ubuntu (apt-get) only.
set -euo pipefail
need=()
[ -f /usr/share/java/ij.jar ] || need+=(imagej)
command -v xvfb-run >/dev/null 2>&1 || need+=(xvfb)
command -v xauth >/dev/null 2>&1 || need+=(xauth)
{ command -v javac >/dev/null 2>&1 && command -v java >/dev/null 2>&1; } || need+=(default-jdk-headless)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi

echo "installing Debian packages: ${need[*]}"
if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: apt-get not found; install these yourself: ${need[*]}" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "error: not root and no sudo; as root run: apt-get install ${need[*]}" >&2
        exit 1
    fi
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
[ -f /usr/share/java/ij.jar ] || { echo "error: ij.jar still missing after installing imagej" >&2; exit 1; }
echo "installed: ${need[*]}"
