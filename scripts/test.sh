#!/usr/bin/env bash
# Create the same environment as scripts/app.sh, then run the whole test suite.
# `bash scripts/test.sh -m e2e` runs only the browser end-to-end test, `-m slurm` only the Slurm jobs.
source "$(dirname "$0")/env.sh"

# The browser test drives Debian's Chromium through Playwright; no browser is ever downloaded
# (never `playwright install`). The emoji font only makes the page icons render in screenshots.
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    as_root=()
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
  else
    as_root=(none)
  fi
  if [ "${as_root[*]-}" = none ] || ! command -v apt-get >/dev/null; then
    echo "nexa: chromium is missing and cannot be installed here (needs apt-get and root or sudo):" \
      "the browser test will be skipped. Install it with: sudo apt-get install chromium" >&2
  else
    echo "nexa: installing chromium for the browser test (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    packages=(chromium fonts-noto-color-emoji)
    # Try the current package lists first; refresh them only when that fails (a fresh image has none).
    "${as_root[@]}" apt-get install -y -qq "${packages[@]}" >/dev/null 2>&1 \
      || { "${as_root[@]}" apt-get update -qq && "${as_root[@]}" apt-get install -y -qq "${packages[@]}"; } \
      || echo "nexa: installing chromium failed: the browser test will be skipped" >&2
  fi
fi

# The Slurm tests (tests/test_slurm.py) run jobs on a private two-node cluster on this machine, which
# scripts/slurm_local.sh starts and stops; Debian's slurm-wlm and munge are installed when missing (as
# root or with sudo; otherwise those tests are skipped with the command to run).
bash "$ROOT/scripts/slurm_local.sh" install || echo "nexa: the Slurm tests will be skipped" >&2

export NEXA_HOME="$(mktemp -d)/nexa_home"  # tests never touch the user's runs (one per worker: conftest.py)
# --durations: the slowest tests in every CI log, to keep the suite inside its time budget
if [ "$#" -gt 0 ]; then  # a chosen subset (-m e2e, a file, -k ...) runs as asked, in one process
  exec python -m pytest -q -ra --durations=20 "$@"
fi
# The whole suite on NEXA_TEST_WORKERS processes (pytest-xdist), a file's tests on one worker: module
# fixtures (the browser tests' app server, the Slurm tests' private cluster) exist once and a file's
# tests run in the order written. Measured on 2 cores: the trainer tests took 187 s on 2 workers
# against 258 s in one process (many of their waits are process start-up, I/O and sleeps).
# (--dist loadgroup would group files further, but with pytest 9.2 and xdist 3.8 it distributed a
# file's tests one by one, even a file marked xdist_group as its docs show (checked on 6 tests).)
exec python -m pytest -q -ra --durations=20 -n "${NEXA_TEST_WORKERS:-2}" --dist loadfile
