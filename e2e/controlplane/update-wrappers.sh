#!/usr/bin/env bash
# Regenerates the wrapper modules (kube-apiserver/go.mod, etcd/go.mod and their
# go.sum) for the versions in versions.env. Run it after changing a version.
#
# k8s.io/kubernetes replaces every k8s.io staging module with a local path, so
# the wrapper maps each of them (as listed in that release's go.mod) to the
# published v0.<minor>.<patch> version that matches the release.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=/dev/null
source "$here/versions.env"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export GOFLAGS="-buildvcs=false"

staging_version="v0.${KUBERNETES_VERSION#v1.}"
k8s_mod="$(go mod download -json "k8s.io/kubernetes@${KUBERNETES_VERSION}" |
	sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
k8s_go="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$k8s_mod")"

{
	echo "module steward.dev/e2e/controlplane/kube-apiserver"
	echo
	echo "go ${k8s_go}"
	echo
	echo "require k8s.io/kubernetes ${KUBERNETES_VERSION}"
	echo
	echo "replace ("
	sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._-]*\) => \./staging/src/.*$#\1#p' "$k8s_mod" |
		while read -r module; do
			printf '\t%s => %s %s\n' "$module" "$module" "$staging_version"
		done
	echo ")"
} >"$here/kube-apiserver/go.mod"
rm -f "$here/kube-apiserver/go.sum"
(cd "$here/kube-apiserver" && go mod tidy)

etcd_mod="$(go mod download -json "go.etcd.io/etcd/server/v3@${ETCD_VERSION}" |
	sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
etcd_go="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$etcd_mod")"
printf 'module steward.dev/e2e/controlplane/etcd\n\ngo %s\n\nrequire go.etcd.io/etcd/server/v3 %s\n' \
	"$etcd_go" "$ETCD_VERSION" >"$here/etcd/go.mod"
rm -f "$here/etcd/go.sum"
(cd "$here/etcd" && go mod tidy)

echo "wrappers regenerated for kubernetes ${KUBERNETES_VERSION} (staging ${staging_version}), etcd ${ETCD_VERSION}"
