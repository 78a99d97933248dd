# Shared by scripts/test, scripts/demo and scripts/bench. Sourced, not run.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
jobs=${KEEL_JOBS:-$(nproc 2>/dev/null || echo 2)}

# configure <build-dir> [cmake -D options...]: Ninja when available; quiet unless it fails.
configure() {
  local dir=$1; shift
  local gen=()
  if [[ ! -f "$dir/CMakeCache.txt" ]] && command -v ninja >/dev/null; then gen=(-G Ninja); fi
  # ccache, when a developer has it, makes rebuilds in other build directories cheap; CI's fresh
  # machine has none and builds as before.
  if command -v ccache >/dev/null; then gen+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
  mkdir -p "$dir"
  cmake -S "$root" -B "$dir" "${gen[@]}" "$@" >"$dir/configure.log" 2>&1 ||
    { cat "$dir/configure.log"; return 1; }
}

# build <build-dir> [targets...]: incremental.
build() {
  local dir=$1; shift
  local targets=()
  [[ $# -gt 0 ]] && targets=(--target "$@")
  cmake --build "$dir" -j "$jobs" "${targets[@]}"
}
