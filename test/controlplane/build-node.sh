#!/usr/bin/env bash
# build-node.sh builds the node binaries of the kubelet e2e provider (kubelet, kube-scheduler)
# from the Kubernetes version pinned in this module's go.mod into the same
# $BIN/k8s-<kubernetes version>/ directory build.sh fills, and reuses them when present.
# Usage: build-node.sh [BIN_DIR]   (default: <repo>/bin)
#
# It reuses this module (same versions, same staging replaces) without editing its go.mod:
# the kubelet imports a few packages whose go.sum lines the control-plane binaries never
# needed, so the build runs with -modfile on a scratch copy of go.mod/go.sum in the output
# directory and lets `go` add those checksums there (verified against sum.golang.org as
# usual). The versions cannot drift: every module is already in k8s.io/kubernetes's
# requirement graph, so -mod=mod only adds checksums.
#
# Both are static (CGO_ENABLED=0), as upstream releases build them.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${1:-$root/bin}"
bin="$(mkdir -p "$bin" && cd "$bin" && pwd)" # absolute: a relative BIN_DIR names a directory of the caller, and this script cds
GO="${GO:-go}"

cd "$here"
k8s_version="$("$GO" list -m -f '{{.Version}}' k8s.io/kubernetes)"
out="$bin/k8s-$k8s_version"
mkdir -p "$out"

major="${k8s_version#v}"; major="${major%%.*}"
minor="${k8s_version#v*.}"; minor="${minor%%.*}"
vpkg=k8s.io/component-base/version
k8s_ldflags="-s -w -X $vpkg.gitVersion=$k8s_version -X $vpkg.gitMajor=$major -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean"

modfile="$out/.node-build/node.mod"

build() { # name package
  local name="$1" pkg="$2"
  if [[ -x "$out/$name" ]]; then
    echo "node: $out/$name present, reusing"
    return
  fi
  mkdir -p "$(dirname "$modfile")"
  cp go.mod "$modfile"
  cp go.sum "${modfile%.mod}.sum"
  local start=$SECONDS
  echo "node: building $name from $pkg ..."
  CGO_ENABLED=0 "$GO" build -modfile="$modfile" -mod=mod -buildvcs=false -trimpath \
    -ldflags "$k8s_ldflags" -o "$out/.$name.tmp" "$pkg"
  mv "$out/.$name.tmp" "$out/$name"
  echo "node: built $name in $((SECONDS - start))s"
}

build kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
build kubelet k8s.io/kubernetes/cmd/kubelet
echo "node: binaries in $out"
