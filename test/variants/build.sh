#!/usr/bin/env bash
# build.sh builds the image matrix of issue 11 from Debian packages and Debian
# source (no registry) into $BIN/variants/ and reuses what is already there.
# Usage: build.sh [BIN_DIR] [variant...]   (default: <repo>/bin, all variants)
#
# Variants (each a directory under $BIN/variants/):
#   redis-official/  Debian's Redis source built with plain `make`: bundled,
#                    static, je_-prefixed jemalloc, as the official image builds it
#   redis-musl/      the same source built with musl-gcc (Alpine-style) + a musl
#                    helper program (no musl shell: Debian ships none)
#   static/          the musl objects relinked -static: fully static redis-server
#                    and redis-cli
#   bullseye-root/   debootstrap minbase bullseye + redis-server 6.0.16 (glibc 2.31)
#   valkey-root/     debootstrap minbase trixie + valkey-server
#
# Every variant is keyed by the version it was built from (a .version file);
# a variant is written under a temporary name and renamed only once complete,
# so an interrupted build is never mistaken for a finished one. Builds use -j2
# at most: the machines this runs on have two cores.
set -euo pipefail
shopt -s inherit_errexit # a failing step inside $(...) stops the build too

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${1:-$root/bin}"
shift || true
bin="$(mkdir -p "$bin" && cd "$bin" && pwd)" # absolute: builds cd around
out="$bin/variants"
mkdir -p "$out"
wanted=("$@")
[[ ${#wanted[@]} -gt 0 ]] || wanted=(redis-official redis-musl static bullseye-root valkey-root)

log() { echo "variants: $*"; }

# apt_install installs the Debian packages that are missing, running
# `apt-get update` at most once per invocation.
apt_updated=""
apt_update() {
  [[ -n "$apt_updated" ]] && return
  apt-get update -qq
  apt_updated=1
}
apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [[ ${#missing[@]} -eq 0 ]] && return
  log "apt-get install ${missing[*]}"
  apt_update
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# mirror is the Debian archive apt already uses here (deb822 or one-line format),
# so debootstrap goes where this machine is allowed to go.
mirror() {
  local m
  m="$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)"
  if [[ -z "$m" ]]; then
    m="$(awk '$1 == "deb" && $2 !~ /security/ && $2 ~ /^http/ {print $2; exit}' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)"
  fi
  echo "${m:-http://deb.debian.org/debian}"
}

# redis_source fetches Debian's redis source package for the version apt offers
# into $out/src/redis-<version> (with Debian's patches applied) and prints its path.
redis_source() {
  local ver dir
  apt_install dpkg-dev
  local src_list=/etc/apt/sources.list.d/pmem-variants-src.sources
  if ! apt-cache showsrc redis >/dev/null 2>&1 || [[ -z "$(apt-cache showsrc redis 2>/dev/null)" ]]; then
    if [[ ! -f "$src_list" ]]; then
      log "adding deb-src for bookworm in $src_list" >&2
      cat >"$src_list" <<EOF
# Added by pmem-webhook test/variants/build.sh: Debian's redis source package.
Types: deb-src
URIs: $(mirror)
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    fi
    apt_updated=""
    apt_update >&2
  fi
  ver="$(apt-cache showsrc redis | awk '/^Version:/ {print $2}' | sort -V | tail -1)"
  dir="$out/src/redis-${ver#*:}"
  if [[ ! -f "$dir/.done" ]]; then
    log "apt-get source redis=$ver" >&2
    rm -rf "$out/src/tmp"
    mkdir -p "$out/src/tmp"
    (cd "$out/src/tmp" && apt-get source -qq "redis=$ver" >&2)
    rm -rf "$dir"
    mv "$(find "$out/src/tmp" -mindepth 1 -maxdepth 1 -type d | head -1)" "$dir"
    rm -rf "$out/src/tmp"
    touch "$dir/.done"
  fi
  echo "$dir"
}

# fresh_tree copies the source into a build directory of its own (so the glibc
# and musl builds never share objects) and prints its path.
fresh_tree() { # name srcdir
  local b="$out/build/$1"
  rm -rf "$b"
  mkdir -p "$out/build"
  cp -a "$2" "$b"
  # Debian's USE_SYSTEM_JEMALLOC patch guards its je_ -> unprefixed renames
  # with `#if ... (USE_SYSTEM_JEMALLOC == yes)`, which the preprocessor reads
  # as 0 == 0 when the flag is unset, so a bundled-jemalloc build fails to
  # link (undefined mallctl, nallocx). The official image builds upstream's
  # source: take Debian's patch back out in this copy.
  local p
  p="$(ls "$b"/debian/patches/*USE_SYSTEM_JEMALLOC*.patch 2>/dev/null | head -1)"
  if [[ -n "$p" ]]; then
    (cd "$b" && patch -R -p1 -s <"$p") >&2
  fi
  echo "$b"
}

# up_to_date reports whether variant $1 was built from version $2.
up_to_date() { [[ -f "$out/$1/.version" && "$(cat "$out/$1/.version")" == "$2" ]]; }

finish() { # name version tmpdir seconds
  echo "$2" >"$3/.version"
  echo "$4" >"$3/.build-seconds"
  rm -rf "${out:?}/$1"
  mv "$3" "$out/$1"
  log "built $1 ($2) in $4s"
}

build_official() {
  local src ver b t start=$SECONDS
  src="$(redis_source)"; ver="$(basename "$src")"
  if up_to_date redis-official "$ver"; then log "redis-official ($ver) present, reusing"; return; fi
  apt_install gcc make pkg-config
  log "building redis-official from $ver (make, bundled jemalloc) ..."
  b="$(fresh_tree official "$src")"
  # Plain `make`, as the official image: MALLOC defaults to the bundled jemalloc.
  make -C "$b" -j2 BUILD_TLS=no USE_SYSTEMD=no MALLOC=jemalloc >"$out/build/official.log" 2>&1 ||
    { tail -30 "$out/build/official.log"; exit 1; }
  t="$out/.redis-official.tmp"; rm -rf "$t"; mkdir -p "$t"
  cp "$b/src/redis-server" "$b/src/redis-cli" "$b/src/redis-benchmark" "$t/"
  finish redis-official "$ver" "$t" $((SECONDS - start))
}

# musl_include holds the Linux UAPI headers musl-gcc lacks (Debian's musl-tools
# does not search /usr/include), as Alpine's linux-headers package provides them.
musl_include() {
  local d="$out/build/musl-include"
  mkdir -p "$d"
  for h in linux asm-generic; do ln -sfn "/usr/include/$h" "$d/$h"; done
  ln -sfn "/usr/include/$(gcc -print-multiarch)/asm" "$d/asm"
  echo "$d"
}

build_musl() {
  local src ver b t inc start=$SECONDS
  src="$(redis_source)"; ver="$(basename "$src")"
  if up_to_date redis-musl "$ver"; then log "redis-musl ($ver) present, reusing"; return; fi
  apt_install musl-tools gcc make linux-libc-dev
  inc="$(musl_include)"
  log "building redis-musl from $ver (musl-gcc, bundled jemalloc) ..."
  b="$(fresh_tree musl "$src")"
  make -C "$b" -j2 CC=musl-gcc "CFLAGS=-isystem $inc" JEMALLOC_CONFIGURE_OPTS=--disable-cxx \
    MALLOC=jemalloc USE_SYSTEMD=no BUILD_TLS=no >"$out/build/musl.log" 2>&1 ||
    { tail -30 "$out/build/musl.log"; exit 1; }
  t="$out/.redis-musl.tmp"; rm -rf "$t"; mkdir -p "$t"
  cp "$b/src/redis-server" "$b/src/redis-cli" "$b/src/redis-benchmark" "$t/"
  # Debian has no musl shell or coreutils; a musl-built helper stands in for
  # "every other process of an Alpine container" (it allocates, then prints).
  musl-gcc -O2 -Wall -o "$t/musl-probe" "$here/probe.c"
  finish redis-musl "$ver" "$t" $((SECONDS - start))
  # The tree stays: the static variant relinks its objects.
}

build_static() {
  local src ver b t start=$SECONDS
  src="$(redis_source)"; ver="$(basename "$src")"
  if up_to_date static "$ver"; then log "static ($ver) present, reusing"; return; fi
  b="$out/build/musl"
  if [[ ! -x "$b/src/redis-server" ]]; then
    rm -f "$out/redis-musl/.version"  # force the musl objects to be rebuilt
    build_musl
  fi
  start=$SECONDS
  log "linking static redis-server from the musl objects ..."
  # Redis's Makefile rebuilds everything when CFLAGS/LDFLAGS change but not when
  # CC does; a CC carrying -static therefore only relinks.
  rm -f "$b/src/redis-server" "$b/src/redis-benchmark" "$b/src/redis-cli"
  make -C "$b/src" -j2 "CC=musl-gcc -static" "CFLAGS=-isystem $(musl_include)" \
    JEMALLOC_CONFIGURE_OPTS=--disable-cxx MALLOC=jemalloc USE_SYSTEMD=no BUILD_TLS=no \
    redis-server redis-cli >"$out/build/static.log" 2>&1 || { tail -30 "$out/build/static.log"; exit 1; }
  if readelf -l "$b/src/redis-server" | grep -q INTERP; then
    echo "variants: static redis-server is dynamically linked" >&2; exit 1
  fi
  t="$out/.static.tmp"; rm -rf "$t"; mkdir -p "$t"
  cp "$b/src/redis-server" "$b/src/redis-cli" "$t/"
  finish static "$ver" "$t" $((SECONDS - start))
}

# build_root makes a minbase root of a Debian suite with packages installed via
# apt-get inside it. A policy-rc.d forbids the packages' maintainer scripts from
# starting services (redis-server's postinst would start a server on 6379).
build_root() { # name suite package...
  local name="$1" suite="$2"; shift 2
  local key="$suite $*" t start=$SECONDS m
  if up_to_date "$name" "$key"; then log "$name ($key) present, reusing"; return; fi
  apt_install debootstrap
  m="$(mirror)"
  log "debootstrap --variant=minbase $suite from $m, then apt-get install $* ..."
  t="$out/.$name.tmp"; rm -rf "$t"
  debootstrap --variant=minbase "$suite" "$t" "$m" >"$out/build-$name.log" 2>&1 ||
    { tail -30 "$out/build-$name.log"; exit 1; }
  printf '#!/bin/sh\nexit 101\n' >"$t/usr/sbin/policy-rc.d"; chmod 0755 "$t/usr/sbin/policy-rc.d"
  cp /etc/resolv.conf "$t/etc/resolv.conf" 2>/dev/null || true
  chroot "$t" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "$@" gawk >>"$out/build-$name.log" 2>&1 || { tail -30 "$out/build-$name.log"; exit 1; }
  chroot "$t" apt-get clean
  chroot "$t" dpkg-query -W "$@" | sed "s/^/variants: $name: /"
  finish "$name" "$key" "$t" $((SECONDS - start))
}

total=$SECONDS
for v in "${wanted[@]}"; do
  case "$v" in
  redis-official) build_official ;;
  redis-musl) build_musl ;;
  static) build_static ;;
  bullseye-root) build_root bullseye-root bullseye redis-server redis-tools ;;
  valkey-root) build_root valkey-root trixie valkey-server valkey-tools ;;
  *) echo "variants: unknown variant $v" >&2; exit 2 ;;
  esac
done
log "variants in $out ($((SECONDS - total))s this run)"
