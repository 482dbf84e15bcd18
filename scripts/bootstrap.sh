# shellcheck shell=bash
# Shared set-up of scripts/demo and scripts/test on a Debian 12 machine, as root.
# Sourced, not run.  Idempotent and cheap when everything is in place:
#   - installs the Debian packages that are missing (non-interactive, quiet);
#   - mounts bpffs on /sys/fs/bpf if it is not mounted;
#   - creates .venv in the project root with the python3 on PATH (>= 3.11);
#   - installs xpro into it in editable mode with every extra, which also
#     compiles bpf/*.bpf.c into src/xpro/_objects/ (setup.py).

set -euo pipefail

XPRO_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
XPRO_VENV="$XPRO_ROOT/.venv"
export XPRO_ROOT XPRO_VENV

XPRO_APT_PACKAGES=(
    clang llvm libbpf-dev libbpf1 bpftool xdp-tools
    iproute2 ethtool iptables nftables
    redis-server etcd-server etcd-client
    gcc python3-venv python3-dev
)

xpro_say() { printf '==> %s\n' "$*" >&2; }
xpro_die() { printf 'error: %s\n' "$*" >&2; exit 1; }

xpro_require_root() {
    [[ $(id -u) -eq 0 ]] || xpro_die "run this as root (sudo $0): it installs packages, \
mounts bpffs and builds network namespaces"
}

xpro_apt() {
    local missing=() pkg
    for pkg in "${XPRO_APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    xpro_say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq </dev/null
    # Keep the packaged redis-server and etcd from starting as system services:
    # tests start their own servers on loopback ports (policy-rc.d, exit 101).
    local policy=/usr/sbin/policy-rc.d ours=0 rc=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && ours=1
    fi
    apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0 "${missing[@]}" \
        </dev/null >/dev/null || rc=$?
    ((ours)) && rm -f "$policy"
    ((rc == 0)) || xpro_die "apt-get install ${missing[*]} failed (exit code $rc)"
}

xpro_bpffs() {
    [[ $(stat -f -c %T /sys/fs/bpf 2>/dev/null) == bpf_fs ]] && return 0
    xpro_say "mounting bpffs on /sys/fs/bpf"
    mkdir -p /sys/fs/bpf
    mount -t bpf bpf /sys/fs/bpf || xpro_die "cannot mount bpffs on /sys/fs/bpf"
}

xpro_venv() {
    local py
    if [[ ! -x $XPRO_VENV/bin/python ]]; then
        py=$(command -v python3) || xpro_die "python3 not found on PATH"
        "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
            || xpro_die "$py is $("$py" -V 2>&1); xpro needs Python 3.11 or newer"
        xpro_say "creating $XPRO_VENV with $("$py" -V 2>&1)"
        "$py" -m venv "$XPRO_VENV"
    fi
    # A full install (resolving dependencies on PyPI) only when the packaging
    # files changed; otherwise a quick editable reinstall, which still
    # recompiles the BPF objects whose sources changed.
    local stamp="$XPRO_VENV/.xpro-install" want
    want=$(cat "$XPRO_ROOT/pyproject.toml" "$XPRO_ROOT/setup.py" | sha256sum | cut -d' ' -f1)
    local pip=("$XPRO_VENV/bin/python" -m pip -q --disable-pip-version-check)
    if [[ -f $stamp && $(cat "$stamp") == "$want" ]] \
        && "$XPRO_VENV/bin/python" -c 'import xpro' 2>/dev/null; then
        (cd "$XPRO_ROOT" && "${pip[@]}" install --no-deps --no-build-isolation -e .) \
            || xpro_die "reinstalling xpro into $XPRO_VENV failed"
    else
        xpro_say "installing xpro and its dependencies into $XPRO_VENV"
        (cd "$XPRO_ROOT" && "${pip[@]}" install 'setuptools>=77' wheel \
            && "${pip[@]}" install -e '.[dev,redis,etcd,docs,lab]') \
            || xpro_die "installing xpro into $XPRO_VENV failed"
        printf '%s\n' "$want" >"$stamp"
    fi
    # The example plugin (docs/plugins.rst), tested through its entry point;
    # reinstalled only when its pyproject.toml changed.
    local ex="$XPRO_ROOT/examples/xpro-example-plugin" exstamp="$XPRO_VENV/.xpro-example-install"
    want=$(sha256sum "$ex/pyproject.toml" | cut -d' ' -f1)
    if [[ ! -f $exstamp || $(cat "$exstamp") != "$want" ]] \
        || ! "$XPRO_VENV/bin/python" -c 'import xpro_example_plugin' 2>/dev/null; then
        xpro_say "installing the example plugin into $XPRO_VENV"
        "${pip[@]}" install --no-deps --no-build-isolation -e "$ex" \
            || xpro_die "installing $ex into $XPRO_VENV failed"
        printf '%s\n' "$want" >"$exstamp"
    fi
}

xpro_bootstrap() {
    xpro_require_root
    xpro_apt
    xpro_bpffs
    xpro_venv
    cd "$XPRO_ROOT"
}
