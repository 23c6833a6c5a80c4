#!/usr/bin/env bash
# Build the chimp-worker container image with buildah, from a Debian base made by debootstrap
# (no image registry needed), then smoke-test it with `buildah run`: `chimp-worker --version`
# and the demo on a small mock plate. Prints the image's size and the time taken.
#
#   bash scripts/build-image.sh                         # base from debootstrap, torch from
#                                                       # PyTorch's CPU index
#   bash scripts/build-image.sh --torch-wheels /srv/wheels   # torch from a local wheel folder
#   bash scripts/build-image.sh --base registry.example.org/debian:bookworm-slim
#
# Options:
#   --base IMAGE         build FROM this Debian 12 image instead of making one (a facility's
#                        registry mirror); no debootstrap then
#   --torch-wheels DIR   install torch/torchvision (and what they need) from this folder,
#                        mounted read-only into the build, instead of PyTorch's index
#   --ca-bundle FILE     CA certificates pip trusts in the build (default: $PIP_CERT, or the
#                        cert pip is configured with here), for a proxy that intercepts TLS
#   --tag NAME           image name (default chimp-worker:<version>)
#   --rebuild-base       make the debootstrap base again even if it exists
#   --no-cache           build every layer again (a clean, timed build)
#   --no-smoke           skip the smoke test
# Environment: DEBIAN_MIRROR (default: the first Debian archive in this machine's apt sources),
# DEBIAN_SUITE (bookworm). Needs root (debootstrap, buildah's chroot isolation); installs
# buildah and debootstrap with apt-get when they are missing.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

base=""
torch_wheels=""
ca_bundle="${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}"
tag=""
rebuild_base=0
cache=(--layers)
smoke=1
while (($#)); do
    case "$1" in
    --base) base="$2"; shift 2 ;;
    --torch-wheels) torch_wheels="$(cd "$2" && pwd)"; shift 2 ;;
    --ca-bundle) ca_bundle="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --rebuild-base) rebuild_base=1; shift ;;
    --no-cache) cache=(--no-cache); shift ;;
    --no-smoke) smoke=0; shift ;;
    -h | --help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done

version="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' chimp_worker/__init__.py)"
tag="${tag:-chimp-worker:$version}"
suite="${DEBIAN_SUITE:-bookworm}"
started=$SECONDS
step() { printf '== %s (%ss)\n' "$*" "$((SECONDS - started))"; }

need=()
command -v buildah >/dev/null || need+=(buildah)
[[ -n $base ]] || command -v debootstrap >/dev/null || need+=(debootstrap)
if ((${#need[@]})); then
    step "installing ${need[*]}"
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi

debian_mirror() {
    # The archive this machine's apt already uses (deb822 .sources or one-line sources.list).
    local uri
    uri="$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null |
        grep -v -- '-security' | head -n 1 || true)"
    if [[ -z $uri ]]; then
        uri="$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list \
            2>/dev/null || true)"
    fi
    echo "${DEBIAN_MIRROR:-$uri}"
}

if [[ -z $base ]]; then
    base="localhost/chimp-worker-base:$suite"
    if ((rebuild_base)) || ! buildah inspect --type image "$base" >/dev/null 2>&1; then
        mirror="$(debian_mirror)"
        [[ -n $mirror ]] || { echo "no Debian mirror: set DEBIAN_MIRROR" >&2; exit 2; }
        rootfs="$(mktemp -d)"
        trap 'rm -rf "$rootfs"' EXIT
        step "debootstrap $suite (minbase) from $mirror"
        debootstrap --variant=minbase --include=ca-certificates "$suite" "$rootfs" "$mirror" \
            >"$rootfs.log" 2>&1 || { tail -n 20 "$rootfs.log" >&2; exit 1; }
        rm -f "$rootfs.log"
        # What apt inside the image uses: the same mirror, its -updates suite, and the security
        # archive this machine uses (DEBIAN_SECURITY_MIRROR to choose another).
        security="${DEBIAN_SECURITY_MIRROR:-$(sed -n 's/^URIs: *\([^ ]*-security\).*/\1/p' \
            /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1 || true)}"
        {
            printf 'deb %s %s main\ndeb %s %s-updates main\n' "$mirror" "$suite" "$mirror" "$suite"
            [[ -z $security ]] || printf 'deb %s %s-security main\n' "$security" "$suite"
        } >"$rootfs/etc/apt/sources.list"
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        step "importing the base as $base"
        container="$(buildah from scratch)"
        buildah add --quiet "$container" "$rootfs" / >/dev/null
        buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            --cmd /bin/bash --os linux --arch amd64 "$container"
        buildah commit --quiet --rm "$container" "$base" >/dev/null
        rm -rf "$rootfs"
        trap - EXIT
    fi
fi

build_args=(--build-arg "BASE_IMAGE=$base")
volumes=()
if [[ -n $torch_wheels ]]; then
    build_args+=(--build-arg TORCH_WHEELS=/wheels)
    volumes+=(--volume "$torch_wheels:/wheels:ro")
fi
if [[ -n $ca_bundle && -f $ca_bundle ]]; then
    build_args+=(--build-arg PIP_CERT=/run/chimp-build-ca.pem)
    volumes+=(--volume "$ca_bundle:/run/chimp-build-ca.pem:ro")
fi
if [[ -n ${PIP_INDEX_URL:-} ]]; then
    build_args+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")
fi
step "building $tag from $base"
buildah build --isolation chroot "${cache[@]}" --format docker --quiet \
    --file deploy/docker/Dockerfile --ignorefile deploy/docker/Dockerfile.dockerignore \
    "${build_args[@]}" "${volumes[@]}" --tag "$tag" . >/dev/null

if ((smoke)); then
    step "smoke test: chimp-worker --version"
    container="$(buildah from --quiet "$tag")"
    trap 'buildah rm "$container" >/dev/null 2>&1 || true' EXIT
    reported="$(buildah run --isolation chroot "$container" -- chimp-worker --version)"
    echo "$reported"
    [[ $reported == *"$version"* ]] || { echo "unexpected version: $reported" >&2; exit 1; }
    step "smoke test: chimp-worker demo --wells 2"
    demo="$(buildah run --isolation chroot "$container" -- \
        chimp-worker demo --wells 2 --no-report --out /tmp/demo)"
    grep -E "images analysed by|drop found inside" <<<"$demo"
    grep -q "4 images analysed by baseline" <<<"$demo" || {
        echo "$demo" >&2
        echo "the demo did not analyse the plate" >&2
        exit 1
    }
fi

size="$(buildah images --format '{{.Size}}' "$tag" | head -n 1)"
step "built $tag: $size"
