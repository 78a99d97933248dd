#!/usr/bin/env bash
# The core-only package test: on a view of this machine without hiredis and libpqxx (their
# headers, pkg-config files and static libraries hidden in a private mount namespace),
# configure keel with no options, check that it turns KEEL_WITH_REDIS and KEEL_WITH_POSTGRES off
# by itself, build and install it, then build and run tests/package/core_consumer (keel::core via
# find_package(keel COMPONENTS core) and via keel.pc), and check that asking for the redis
# component fails. Needs root or unprivileged user namespaces (unshare -rm).
# Usage: tests/package/core_only.sh <work-dir>
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mkdir -p "$1" && cd "$1" && pwd)

if [[ -z "${KEEL_CORE_ONLY_NS:-}" ]]; then
  ns=(unshare -m)
  [[ $(id -u) -eq 0 ]] || ns=(unshare -r -m)
  exec env KEEL_CORE_ONLY_NS=1 "${ns[@]}" "$0" "$work"
fi

# Inside the namespace: nothing mounted here propagates to the rest of the machine.
mount --make-rprivate /
empty="$work/empty"
rm -rf "$work/build" "$work/prefix" "$work/consumer" "$work/consumer-redis" "$empty"
mkdir -p "$empty"
for d in /usr/include/hiredis /usr/include/pqxx /usr/include/postgresql; do
  [[ -d "$d" ]] && mount --bind "$empty" "$d"
done
# pkg-config files and static libraries: an empty file over each. The shared libraries stay:
# tools of this machine load them at run time (ccache links hiredis), and without headers and
# pkg-config files nothing can build against them anyway.
pcdir=$(pkg-config --variable=pc_path pkg-config | tr ':' '\n')
for f in $(for d in $pcdir /usr/lib/*-linux-gnu /usr/lib /usr/local/lib; do
             ls -d "$d"/{hiredis,libpqxx,libpq}.pc "$d"/lib{hiredis,pqxx,pq}.a 2>/dev/null || true
           done | sort -u); do
  mount --bind /dev/null "$f"
done
if pkg-config --exists hiredis || pkg-config --exists libpqxx || [[ -e /usr/include/hiredis/hiredis.h ]] ||
   [[ -e /usr/include/pqxx/pqxx ]]; then
  echo "core-only: hiredis or libpqxx still visible" >&2; exit 1
fi

gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
jobs=${KEEL_JOBS:-$(nproc 2>/dev/null || echo 2)}

echo "core-only: configure keel (no KEEL_WITH_* given)"
cmake -S "$root" -B "$work/build" "${gen[@]}" "${launcher[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DKEEL_BUILD_TESTS=OFF -DKEEL_BUILD_BENCHMARKS=OFF -DKEEL_BUILD_EXAMPLES=OFF -DKEEL_INSTALL=ON \
  >"$work/configure.log" 2>&1 || { cat "$work/configure.log"; exit 1; }
for opt in KEEL_WITH_REDIS KEEL_WITH_POSTGRES; do
  grep -q "^$opt:BOOL=OFF$" "$work/build/CMakeCache.txt" ||
    { echo "core-only: $opt is not OFF without its library" >&2; exit 1; }
done
grep -q "hiredis not found" "$work/configure.log" ||
  { echo "core-only: configure did not say that hiredis is missing" >&2; exit 1; }

echo "core-only: build and install keel::core"
cmake --build "$work/build" -j "$jobs"
cmake --install "$work/build" --prefix "$work/prefix" >/dev/null
for absent in include/keel/redis include/keel/postgres; do
  [[ ! -e "$work/prefix/$absent" ]] || { echo "core-only: installed $absent" >&2; exit 1; }
done
if ls "$work"/prefix/lib*/libkeel_redis.a "$work"/prefix/lib*/libkeel_postgres.a 2>/dev/null; then
  echo "core-only: installed a Redis or PostgreSQL library" >&2; exit 1
fi

echo "core-only: consumer through find_package(keel COMPONENTS core)"
cmake -S "$here/core_consumer" -B "$work/consumer" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$work/prefix" >"$work/consumer.log" 2>&1 ||
  { cat "$work/consumer.log"; exit 1; }
cmake --build "$work/consumer"
"$work/consumer/core_consumer" >/dev/null

echo "core-only: find_package(keel COMPONENTS redis) must fail"
if cmake -S "$here/core_consumer" -B "$work/consumer-redis" "${gen[@]}" -DWANT_REDIS=ON \
     -DCMAKE_PREFIX_PATH="$work/prefix" >"$work/consumer-redis.log" 2>&1; then
  echo "core-only: the redis component was found in a core-only install" >&2; exit 1
fi
grep -q "built without redis" "$work/consumer-redis.log" ||
  { cat "$work/consumer-redis.log"; echo "core-only: no reason given for the missing redis" >&2; exit 1; }

echo "core-only: consumer through keel.pc"
pc_path=$(ls -d "$work"/prefix/lib*/pkgconfig)
# shellcheck disable=SC2046
c++ "$here/core_consumer/main.cc" -o "$work/core_consumer_pc" \
  $(PKG_CONFIG_PATH=$pc_path pkg-config --cflags --libs keel) -pthread
"$work/core_consumer_pc" >/dev/null
echo "core-only: ok"
