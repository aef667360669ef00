#!/usr/bin/env bash
# `make verify-arm64`: run every ONNX bundle of the demo on ARM64 CPU kernels under qemu-user emulation.
#
# Builds (once) an arm64 Debian bookworm root with debootstrap + qemu-user-static, pip-installs aarch64 numpy and
# onnxruntime inside it, builds the demo and its bundles on this (x86) host, runs each ONNX bundle's verify.py in
# the arm64 root for every emulated CPU model in ARM64_CPUS, and writes the verdicts and the numeric differences
# from x86 to $ARM64_OUT/results.md and results.json. Emulated latency is meaningless; the numerics are real ARM
# kernels (ONNX Runtime's aarch64 MLAS code paths, chosen from the emulated CPU's HWCAP bits).
#
#   sudo make verify-arm64                      # needs root: apt-get, mount binfmt_misc, debootstrap, chroot
#   ARM64_ROOT=/srv/arm64 ARM64_CPUS="max cortex-a72" tools/verify_arm64.sh
#   ARM64_TORCH=1 ...                           # also pip-install aarch64 CPU torch (ARM64_TORCH_INDEX, ARM64_TORCH_SPEC)
#                                               # and verify the TorchScript bundles
#   ARM64_STEPS=root ...                        # only build the arm64 root (root | bundles | run, comma-separated)
#
# Downloads about 300 MB the first time (the Debian root, numpy and onnxruntime wheels; torch adds ~200 MB).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT="${ARM64_ROOT:-/var/cache/edgekit/arm64-root}"
OUT="${ARM64_OUT:-$HERE/build/arm64}"
PY="${PYTHON:-$HERE/.venv/bin/python}"
CPUS="${ARM64_CPUS:-max cortex-a76 cortex-a72}"
RUNS="${ARM64_RUNS:-5}"
STEPS="${ARM64_STEPS:-root,bundles,run}"
SUITE=bookworm

say() { printf '[verify-arm64] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 2; }
want() { [[ ",$STEPS," == *",$1,"* ]]; }

[[ "$(id -u)" == 0 ]] || die "needs root (apt-get, mount binfmt_misc, debootstrap, chroot): run it with sudo"
[[ "$(uname -m)" == x86_64 || "$(uname -m)" == aarch64 ]] || die "unsupported host $(uname -m)"

# ------------------------------------------------------------------------------------ the arm64 root

debian_mirror() {
    # the mirror apt already uses: deb822 sources first, then the one-line format
    local uri
    uri=$(grep -h -m1 -E '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -1 | awk '{print $2}') || true
    [[ -n "$uri" ]] || uri=$(grep -h -m1 -E '^deb ' /etc/apt/sources.list 2>/dev/null | grep -v security | awk '{print $2}') || true
    echo "${uri:-http://deb.debian.org/debian}"
}

ensure_tools() {
    if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null || ! command -v update-binfmts >/dev/null; then
        say "installing qemu-user-static debootstrap binfmt-support"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user-static debootstrap binfmt-support >&2
    fi
    if [[ "$(uname -m)" == x86_64 ]]; then
        if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
            mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || die "cannot mount binfmt_misc (a container without the privilege?)"
        fi
        if [[ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
            update-binfmts --enable qemu-aarch64 || die "update-binfmts --enable qemu-aarch64 failed"
        fi
    fi
}

mounted=()
mount_into_root() {
    # no /sys: with the host's /sys, ONNX Runtime's cpuinfo crashes under qemu-user; without it cpuinfo gives up
    # ("cpuinfo_initialize failed") and MLAS picks its kernels from getauxval(AT_HWCAP/AT_HWCAP2): the emulated CPU's
    for d in proc dev; do
        if ! mountpoint -q "$ROOT/$d"; then
            if [[ $d == proc ]]; then mount -t proc proc "$ROOT/proc"; else mount --bind "/$d" "$ROOT/$d"; fi
            mounted+=("$ROOT/$d")
        fi
    done
}
unmount_all() { for m in "${mounted[@]}"; do umount -l "$m" 2>/dev/null || true; done; }
trap unmount_all EXIT

build_root() {
    ensure_tools
    if [[ ! -f "$ROOT/.debootstrap-done" ]]; then
        local mirror partial="$ROOT.partial"
        mirror=$(debian_mirror)
        say "debootstrap arm64 $SUITE from $mirror into $ROOT (once)"
        rm -rf "$partial"
        mkdir -p "$(dirname "$ROOT")"
        debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,python3-pip "$SUITE" "$partial" "$mirror" >&2
        touch "$partial/.debootstrap-done"
        rm -rf "$ROOT" && mv "$partial" "$ROOT"
    fi
    # pip inside the root reaches the package index with the host's CA bundle and resolver
    mkdir -p "$ROOT/etc/ssl/certs"
    cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
    cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
    mount_into_root
    local pip=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180
               PIP_CERT=/etc/ssl/certs/ca-certificates.crt chroot "$ROOT" /opt/venv/bin/python -m pip install -q)
    if [[ ! -f "$ROOT/.edgekit-ready" ]] || [[ ! -x "$ROOT/opt/venv/bin/python" ]]; then
        say "python3 -m venv /opt/venv; pip install numpy onnxruntime (aarch64 wheels)"
        env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$ROOT" python3 -m venv /opt/venv
        "${pip[@]}" numpy onnxruntime >&2
        touch "$ROOT/.edgekit-ready"
    fi
    if [[ "${ARM64_TORCH:-0}" == 1 ]] && ! env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$ROOT" /opt/venv/bin/python -c "import torch" 2>/dev/null; then
        # PyPI's aarch64 torch wheels pull CUDA packages (GBs); PyTorch's CPU index has the CPU-only aarch64 wheel
        say "pip install ${ARM64_TORCH_SPEC:-torch==2.13.0} from ${ARM64_TORCH_INDEX:-https://download.pytorch.org/whl/cpu} (optional)"
        "${pip[@]}" --index-url "${ARM64_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}" "${ARM64_TORCH_SPEC:-torch==2.13.0}" >&2 \
            || say "aarch64 torch did not install: the TorchScript bundles are skipped"
    fi
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$ROOT" /opt/venv/bin/python -c \
        "import platform, numpy, onnxruntime; print('arm64 root:', platform.machine(), 'numpy', numpy.__version__, 'onnxruntime', onnxruntime.__version__)" >&2
}

# ------------------------------------------------------------------------ the demo and its bundles (x86)

build_bundles() {
    [[ -x "$PY" ]] || PY=python3
    mkdir -p "$OUT"
    if [[ ! -f "$OUT/demo/manifest.json" ]]; then
        say "edgekit demo -o $OUT/demo (on this host)"
        (cd "$HERE" && PYTHONPATH="$HERE" "$PY" -m edgekit -q demo -o "$OUT/demo") >&2 || [[ $? == 1 ]]
    fi
    say "edgekit bundle $OUT/demo -o $OUT/bundles"
    rm -rf "$OUT/bundles"
    (cd "$HERE" && PYTHONPATH="$HERE" "$PY" -m edgekit -q bundle "$OUT/demo" -o "$OUT/bundles") >&2
}

# ------------------------------------------------------------------------------- verify under aarch64

run_bundles() {
    mount_into_root
    local inside=/tmp/edgekit-bundles
    rm -rf "$ROOT$inside" && mkdir -p "$ROOT$inside/reports"
    local have_torch=0
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$ROOT" /opt/venv/bin/python -c "import torch" 2>/dev/null && have_torch=1
    : > "$OUT/runs.tsv"
    for bundle in "$OUT"/bundles/*/; do
        local name runtime
        name=$(basename "$bundle")
        runtime=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['runtime']['name'])" "$bundle/bundle.json")
        if [[ "$runtime" == torch && $have_torch == 0 ]]; then
            say "$name: TorchScript bundle skipped (no aarch64 torch in the root; ARM64_TORCH=1 installs it)"
            continue
        fi
        cp -r "$bundle" "$ROOT$inside/$name"
        for cpu in $CPUS; do
            local start end code=0
            start=$(date +%s.%N)
            env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root QEMU_CPU="$cpu" chroot "$ROOT" /opt/venv/bin/python \
                "$inside/$name/verify.py" "$inside/$name" --runs "$RUNS" --warmup 1 \
                --json "$inside/reports/$name@$cpu.json" > "$OUT/$name@$cpu.log" 2>&1 || code=$?
            end=$(date +%s.%N)
            say "$name on emulated $cpu: exit $code ($(printf '%.0f' "$(echo "$end - $start" | bc)") s wall)"
            printf '%s\t%s\t%s\t%s\n' "$name" "$cpu" "$code" "$(echo "$end - $start" | bc)" >> "$OUT/runs.tsv"
        done
    done
    rm -rf "$OUT/reports" && cp -r "$ROOT$inside/reports" "$OUT/reports"
    "$PY" "$HERE/tools/arm64_results.py" "$OUT" "$(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$ROOT" /opt/venv/bin/python -c \
        'import numpy, onnxruntime; print(f"numpy {numpy.__version__}, onnxruntime {onnxruntime.__version__}")')"
    say "results: $OUT/results.md"
}

want root && build_root
want bundles && build_bundles
want run && run_bundles
exit 0
