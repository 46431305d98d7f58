#!/usr/bin/env bash
# Installs the Debian packages the project needs: ImageJ 1.x (macro tests), Xvfb, a JDK for the
# macro runner. Does nothing when they are already there; needs root (or sudo) otherwise.
set -euo pipefail
need=()
command -v imagej >/dev/null 2>&1 || [ -f /usr/share/java/ij.jar ] || need+=(imagej)
command -v xvfb-run >/dev/null 2>&1 || need+=(xvfb xauth)
command -v javac >/dev/null 2>&1 || need+=(default-jdk-headless)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
echo "installing Debian packages: ${need[*]}"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
