#!/bin/bash
# Installs everything sluice needs to build and to run its whole test suite on
# Debian 12, as root, without asking anything. System services the packages
# would start (postfix on port 25, redis, rbldnsd, freshclam) stay stopped: the
# tests start their own private instances on their own ports.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps.sh: run as root (sudo $0)" >&2
    exit 1
fi

packages=(
    build-essential cmake pkg-config clang
    libevent-dev libssl-dev liblua5.4-dev libclamav-dev libcmocka-dev
    liblmdb-dev libhiredis-dev libc-ares-dev libconfig-dev libidn2-dev libunistring-dev
    clamav clamav-daemon dnsmasq-base dnsutils redis-server rbldnsd lmdb-utils openssl
    python3-aiosmtpd swaks libnet-ssleay-perl postfix systemd
)

export DEBIAN_FRONTEND=noninteractive

# Postfix asks how to configure itself unless told beforehand.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
echo "postfix postfix/mailname string localhost" | debconf-set-selections

# invoke-rc.d consults policy-rc.d: exit code 101 means "do not start".
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
fi
remove_policy() {
    if [ "$made_policy" -eq 1 ]; then
        rm -f "$policy"
    fi
}
trap remove_policy EXIT

postfix_running() {
    [ -x /usr/sbin/postfix ] && /usr/sbin/postfix status >/dev/null 2>&1
}
postfix_was_running=0
if postfix_running; then
    postfix_was_running=1
fi

apt-get update
apt-get install -y --no-install-recommends "${packages[@]}" </dev/null

# A system Postfix the install started would hold port 25; one that ran
# before is the operator's and stays as it was.
if [ "$postfix_was_running" -eq 0 ] && postfix_running; then
    /usr/sbin/postfix stop || true
fi

# The worker's user (sluice.conf's default "user"): the integration tests
# run sluice with its privileges dropped to it, as in production.
if ! getent passwd sluice >/dev/null; then
    adduser --system --group --home /var/lib/sluice --no-create-home sluice
fi

echo "install-deps.sh: done"
