#!/usr/bin/env bash
# build.sh builds etcd, kube-apiserver, kube-controller-manager and kubectl from the
# versions pinned in this module's go.mod into $BIN/k8s-<kubernetes version>/ and reuses
# each one that is already there (so a directory from before kubectl was added gets only
# kubectl). Usage: build.sh [BIN_DIR]   (default: <repo>/bin)
#
# kubectl is the client the README's install commands use (`kubectl apply -k`, `kubectl
# plugin list`); it cannot be a `go tool` (k8s.io/kubernetes is not importable as a
# dependency without these staging replaces), so it is built here, from the same source as
# the apiserver it talks to in the tests.
#
# The output directory is keyed by the Kubernetes version so that bumping go.mod
# never reuses stale binaries; a binary is written under a temporary name and
# renamed only once complete, so an interrupted build is never mistaken for a
# finished one.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${1:-$root/bin}"
bin="$(mkdir -p "$bin" && cd "$bin" && pwd)" # absolute: a relative BIN_DIR names a directory of the caller, and this script cds
GO="${GO:-go}"

cd "$here"
k8s_version="$("$GO" list -m -f '{{.Version}}' k8s.io/kubernetes)"
etcd_version="$("$GO" list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)"
out="$bin/k8s-$k8s_version"
mkdir -p "$out"

# Stamp the version the way Kubernetes' own build does (hack/lib/version.sh), so
# the apiserver reports v1.37.0 instead of v0.0.0-master to clients.
major="${k8s_version#v}"; major="${major%%.*}"
minor="${k8s_version#v*.}"; minor="${minor%%.*}"
vpkg=k8s.io/component-base/version
k8s_ldflags="-s -w -X $vpkg.gitVersion=$k8s_version -X $vpkg.gitMajor=$major -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean"

build() { # name package ldflags
  local name="$1" pkg="$2" ldflags="$3"
  if [[ -x "$out/$name" ]]; then
    echo "controlplane: $out/$name present, reusing"
    return
  fi
  local start=$SECONDS
  echo "controlplane: building $name from $pkg ..."
  CGO_ENABLED=0 "$GO" build -buildvcs=false -trimpath -ldflags "$ldflags" -o "$out/.$name.tmp" "$pkg"
  mv "$out/.$name.tmp" "$out/$name"
  echo "controlplane: built $name in $((SECONDS - start))s"
}

build etcd go.etcd.io/etcd/server/v3 "-s -w"
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$k8s_ldflags"
build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager "$k8s_ldflags"
build kubectl k8s.io/kubernetes/cmd/kubectl "$k8s_ldflags"
echo "$etcd_version" >"$out/etcd.version"
echo "controlplane: binaries in $out"
