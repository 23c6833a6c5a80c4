#!/usr/bin/env bash
# Offline checks of everything under deploy/: the systemd unit, the container files, the
# Kubernetes manifests and the broker policy. No Docker engine, cluster or network needed.
# CI runs it through tests/deploy; run it by hand after editing anything under deploy/.
#
#   bash scripts/check-deploy.sh [DEPLOY_DIR]      (default: this checkout's deploy/)
#   CHECK_DEPLOY_ONLY=systemd,kubernetes bash scripts/check-deploy.sh   (some groups only:
#   systemd, container, shell, kubernetes, rabbitmq)
#
# Tools (from the test extra, in .venv/bin): hadolint, shellcheck, kubectl (for kustomize),
# kubernetes-validate (Kubernetes JSON schemas bundled, validated strictly: unknown fields
# fail), check-jsonschema (the compose-spec schema bundled). systemd-analyze and
# systemd-sysusers come from Debian's systemd package (scripts/setup-system.sh).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
deploy="$(cd "${1:-$repo/deploy}" && pwd)"
bin="$repo/.venv/bin"
schemas="$repo/tests/deploy/schemas"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failures=0
only=",${CHECK_DEPLOY_ONLY:-systemd,container,shell,kubernetes,rabbitmq},"

wanted() { [[ $only == *",$1,"* ]]; }
step() { printf '== %s\n' "$*"; }
fail() {
    printf 'FAIL: %s\n' "$*" >&2
    failures=$((failures + 1))
}

if wanted systemd; then
    step "systemd: systemd-analyze verify"
    unit="$deploy/systemd/chimp-worker.service"
    exec_start="ExecStart=/opt/chimp-worker/venv/bin/chimp-worker"
    if ! grep -q "^$exec_start " "$unit"; then
        fail "$unit: expected '$exec_start ...' (the install path the README documents)"
    fi
    # verify insists that ExecStart's binary exists (it does not check User=): verify a copy that
    # starts this checkout's chimp-worker with the same arguments.
    sed "s#^$exec_start #ExecStart=$bin/chimp-worker #" "$unit" >"$work/chimp-worker.service"
    # verify exits 0 on a misspelt key or an unparsable value and only prints a warning, so any
    # output at all is a failure.
    if ! output="$(systemd-analyze verify "$work/chimp-worker.service" 2>&1)" || [[ -n $output ]]; then
        fail "systemd-analyze verify: ${output:-non-zero exit}"
    fi

    step "systemd: hardening exposure (systemd-analyze security, threshold 2.0)"
    if ! output="$(systemd-analyze security --offline=yes --threshold=20 --no-pager \
        "$work/chimp-worker.service" 2>&1)"; then
        fail "systemd-analyze security: $(tail -n 1 <<<"$output")"
    else
        tail -n 1 <<<"$output"
    fi

    step "systemd: sysusers.d entry creates the unit's user"
    mkdir -p "$work/sysroot/etc"
    systemd-sysusers --root="$work/sysroot" "$deploy/systemd/chimp-worker.sysusers.conf" >/dev/null 2>&1 ||
        fail "systemd-sysusers rejected $deploy/systemd/chimp-worker.sysusers.conf"
    unit_user="$(sed -n 's/^User=//p' "$unit")"
    grep -q "^$unit_user:" "$work/sysroot/etc/passwd" 2>/dev/null ||
        fail "sysusers.d entry does not create User=$unit_user"
fi

if wanted container; then
    step "container: hadolint"
    "$bin/hadolint" "$deploy/docker/Dockerfile" || fail "hadolint: $deploy/docker/Dockerfile"

    step "container: compose file against the compose-spec schema"
    "$bin/check-jsonschema" --builtin-schema vendor.compose-spec "$deploy/docker/docker-compose.yml" ||
        fail "compose-spec: $deploy/docker/docker-compose.yml"
fi

if wanted shell; then
    step "shell scripts: shellcheck"
    "$bin/shellcheck" "$deploy/docker/chimp-worker-alive" "$repo/scripts/check-deploy.sh" \
        "$repo/scripts/build-image.sh" ||
        fail "shellcheck"
fi

if wanted kubernetes; then
    # Oldest Kubernetes release where every field used is GA (CronJob timeZone), and the newest
    # one kubernetes-validate knows.
    k8s_versions=(1.27.0 "$("$bin/python" -c 'import kubernetes_validate.utils as u; print(u.latest_version())')")
    step "kubernetes: kustomize build"
    if ! "$bin/kubectl" kustomize "$deploy/kubernetes" >"$work/rendered.yaml" 2>"$work/kustomize.err"; then
        fail "kubectl kustomize: $(cat "$work/kustomize.err")"
    fi

    step "kubernetes: strict schema validation (${k8s_versions[*]})"
    # KEDA's kinds are custom resources the Kubernetes schemas do not cover: kubernetes-validate
    # skips them with a warning (--no-warn) and check-jsonschema validates them below instead.
    for version in "${k8s_versions[@]}"; do
        "$bin/kubernetes-validate" --strict --quiet --no-warn -k "$version" "$work/rendered.yaml" \
            "$deploy/kubernetes/secret.example.yaml" "$deploy/kubernetes/volumes.example.yaml" ||
            fail "kubernetes-validate $version"
    done

    step "kubernetes: KEDA objects against tests/deploy/schemas"
    "$bin/check-jsonschema" --schemafile "$schemas/keda-scaledobject.schema.json" \
        "$deploy/kubernetes/keda-scaledobject.yaml" || fail "KEDA ScaledObject schema"
    "$bin/check-jsonschema" --schemafile "$schemas/keda-triggerauthentication.schema.json" \
        "$deploy/kubernetes/keda-triggerauthentication.yaml" || fail "KEDA TriggerAuthentication schema"
fi

if wanted rabbitmq; then
    step "rabbitmq: policy definitions are JSON"
    "$bin/python" -m json.tool "$deploy/rabbitmq/policies.json" >/dev/null ||
        fail "$deploy/rabbitmq/policies.json is not valid JSON"
fi

if ((failures)); then
    printf '%d deploy check(s) failed\n' "$failures" >&2
    exit 1
fi
echo "all deploy checks passed"
