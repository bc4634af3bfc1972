# Shared by quickstart.sh and test.sh: create .venv if absent (or broken) and install
# streamtrain with the extras given in $1 into it. Safe to run again.
# STREAMTRAIN_SKIP_INSTALL=1 reuses .venv as it is (the test suite runs quickstart.sh that way).
ensure_venv() {
  local extras="$1"
  local python="${PYTHON:-python3}"
  if ! .venv/bin/python -c 'import sys; assert sys.version_info >= (3, 11)' >/dev/null 2>&1; then
    echo "creating .venv with $("$python" --version 2>&1)" >&2
    rm -rf .venv
    "$python" -m venv .venv
  fi
  if [ "${STREAMTRAIN_SKIP_INSTALL:-0}" = 1 ]; then
    return 0
  fi
  echo "installing streamtrain[$extras] into .venv (log: .venv/install.log)" >&2
  # pip's and the build backend's chatter goes to a log, shown only if the install fails.
  if ! { .venv/bin/python -m pip install --disable-pip-version-check --upgrade pip &&
         .venv/bin/python -m pip install --disable-pip-version-check -e ".[$extras]"; } >.venv/install.log 2>&1; then
    tail -n 40 .venv/install.log >&2
    echo "error: installing streamtrain[$extras] failed; full log in .venv/install.log" >&2
    return 1
  fi
}
