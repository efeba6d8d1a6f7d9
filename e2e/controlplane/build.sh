#!/usr/bin/env bash
# Builds the e2e control plane (kube-apiserver, etcd, helm) from Go modules
# into a cache outside the repository, keyed by the pinned versions:
#   ${STEWARD_CACHE:-$HOME/.cache/steward}/controlplane/<versions>/bin
# A warm cache is detected and nothing is rebuilt ("cache warm").
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=/dev/null
source "$here/versions.env"

cache_root="${STEWARD_CACHE:-${HOME}/.cache/steward}"
key="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_helm-${HELM_VERSION}"
bin_dir="${cache_root}/controlplane/${key}/bin"
stamp="${bin_dir}/.complete"

if [[ -f "$stamp" && -x "$bin_dir/kube-apiserver" && -x "$bin_dir/etcd" && -x "$bin_dir/helm" ]]; then
	echo "controlplane: cache warm (${bin_dir})"
	exit 0
fi

if ! command -v go >/dev/null 2>&1; then
	echo "controlplane: go not found on PATH; cannot build ${key}" >&2
	exit 1
fi

# The wrapper modules must pin the same versions as versions.env.
check_pin() {
	local gomod="$1" module="$2" version="$3"
	if ! grep -Eq "^[[:space:]]*(require[[:space:]]+)?${module//./\\.}[[:space:]]+${version//./\\.}([[:space:]]|$)" "$gomod"; then
		echo "controlplane: ${gomod} does not require ${module} ${version} (see versions.env; run update-wrappers.sh)" >&2
		exit 1
	fi
}
check_pin "$here/kube-apiserver/go.mod" k8s.io/kubernetes "$KUBERNETES_VERSION"
check_pin "$here/etcd/go.mod" go.etcd.io/etcd/server/v3 "$ETCD_VERSION"

# Never let a toolchain line or a stale GOFLAGS from the environment change the build.
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export GOFLAGS="-trimpath -buildvcs=false -mod=readonly"
export CGO_ENABLED=0

mkdir -p "$bin_dir"
staging="$(mktemp -d "${bin_dir}/.build.XXXXXX")"
trap 'rm -rf "$staging"' EXIT

total_start=$SECONDS
timed() {
	local name="$1"
	shift
	local start=$SECONDS
	echo "controlplane: building ${name} ..."
	"$@"
	echo "controlplane: built ${name} in $((SECONDS - start))s"
}

k8s_minor="${KUBERNETES_VERSION#v}"
k8s_minor="${k8s_minor#*.}"
k8s_minor="${k8s_minor%%.*}"
build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	k8s_ldflags+=" -X ${pkg}.gitVersion=${KUBERNETES_VERSION}"
	k8s_ldflags+=" -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${k8s_minor}"
	k8s_ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=${build_date}"
done

echo "controlplane: building ${key} into ${bin_dir}"
timed "etcd ${ETCD_VERSION}" \
	go -C "$here/etcd" build -ldflags="-s -w" -o "$staging/etcd" .
timed "kube-apiserver ${KUBERNETES_VERSION}" \
	go -C "$here/kube-apiserver" build -ldflags="$k8s_ldflags" -o "$staging/kube-apiserver" .
timed "helm ${HELM_VERSION}" \
	env GOBIN="$staging" go install -ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}" \
	"helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"

for b in etcd kube-apiserver helm; do
	mv -f "$staging/$b" "$bin_dir/$b"
done
touch "$stamp"
echo "controlplane: done in $((SECONDS - total_start))s ($(du -sh "$bin_dir" | cut -f1) of binaries)"
