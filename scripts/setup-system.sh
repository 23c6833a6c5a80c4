#!/usr/bin/env bash
# Debian packages, by group:
#   build  libmariadb-dev + pkg-config, to compile mysqlclient (the demo needs only these)
#   test   chromium + chromium-driver for the report's browser test, systemd for
#          systemd-analyze verify of the unit
# Installs only what is missing, so a second run costs nothing.
set -euo pipefail
groups=("${@:-build}")
need=()
for group in "${groups[@]}"; do
    case $group in
    build)
        dpkg -s libmariadb-dev >/dev/null 2>&1 || need+=(libmariadb-dev)
        dpkg -s pkg-config >/dev/null 2>&1 || need+=(pkg-config)
        ;;
    test)
        command -v chromium >/dev/null 2>&1 || need+=(chromium)
        command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
        command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
        ;;
    *)
        echo "setup-system.sh: unknown group $group (build, test)" >&2
        exit 2
        ;;
    esac
done
if ((${#need[@]})); then
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    echo "installing Debian packages: ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
