#!/usr/bin/env bash
# yl-status developer entry point.
#   ./run.sh demo   the whole system on this machine: mosquitto, a YL-monitor test double,
#                   the bridge, the status app and a simulated GUI node (Ctrl-C stops it)
#   ./run.sh test   lint, type-check and the whole test suite
#   ./run.sh setup  only install what is missing (mosquitto, Chromium, PostgreSQL, the venv)
#   ./run.sh bench [NAME ARGS...]  a benchmark (bench/NAME.py, default bridge) with the
#                   profiler the benches use (py-spy)
#   ./run.sh mutate mutation testing of yl_core.truth, yl_core.protocol and the outbox's
#                   decisions against their tests (mutmut; names of mutants to run may follow)
# Each command first installs whatever this machine lacks.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)

setup() {
  if [ "${1:-}" = browser ]; then
    command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
    command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
    command -v faketime >/dev/null 2>&1 || need_apt+=(faketime)   # clock-skew tests
    # PostgreSQL's server, for the active/standby bridge tests (each starts its own).
    compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || need_apt+=(postgresql)
    [ -x /usr/sbin/ejabberdctl ] || need_apt+=(ejabberd)   # a clustered MQTT 5 broker
    command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)  # verifying the units
    command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)   # the stock-host test's namespace
  fi
  if [ ${#need_apt[@]} -gt 0 ]; then
    echo "run.sh: installing ${need_apt[*]} with apt-get" >&2
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
      "${need_apt[@]}" >/dev/null
    # The tests start their own servers: stop the system ones a package may have started.
    for service in postgresql ejabberd; do
      if [[ " ${need_apt[*]} " == *" $service "* ]]; then
        $sudo service "$service" stop >/dev/null 2>&1 || true
      fi
    done
  fi
  if [ "${1:-}" = browser ] && ! command -v promtool >/dev/null 2>&1; then
    echo "run.sh: installing prometheus (promtool, for the alert rule tests) with apt-get" >&2
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    [ ${#need_apt[@]} -gt 0 ] || $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      prometheus >/dev/null
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
  fi
  local stamp="$VENV/.installed"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e '.[test]'
    touch "$stamp"
  fi
}

case "${1:-}" in
  setup)
    setup browser
    ;;
  demo)
    setup
    shift
    exec "$VENV/bin/python" -m yl_status.demo "$@"
    ;;
  bench)
    setup
    shift
    "$VENV/bin/python" -m pip install -q -e '.[bench]'
    name=${1:-bridge}
    shift || true
    exec "$VENV/bin/python" -m "bench.$name" "$@"
    ;;
  mutate)
    setup browser
    shift
    "$VENV/bin/python" -m pip install -q -e '.[mutation]'
    if [ $# -eq 0 ]; then
      set -- 'yl_core.truth*' 'yl_core.protocol*' 'bridge.outbox.xǁOutboxǁrecord__*' \
        'bridge.outbox.xǁOutboxǁnext_item*' 'bridge.outbox.xǁOutboxǁdone*' \
        'bridge.outbox.xǁOutboxǁrecord_silences*'
    fi
    "$VENV/bin/mutmut" run "$@" || true
    echo "run.sh: the mutants that were not killed (none listed: all were):"
    "$VENV/bin/mutmut" results | grep -v ': not checked$' || true
    ;;
  test)
    setup browser
    shift
    "$VENV/bin/ruff" check src tests bench testkit examples
    "$VENV/bin/mypy"
    # Two workers: most tests wait on real processes, and each passes beside another.
    exec "$VENV/bin/python" -m pytest -n 2 "$@"
    ;;
  *)
    sed -n '2,9p' "$0" >&2
    exit 2
    ;;
esac
