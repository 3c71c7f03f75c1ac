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

export NEXA_HOME="$(mktemp -d)/nexa_home"  # tests never touch the user's runs
# --durations: the slowest tests in every CI log, to keep the suite inside its time budget
if [ "$#" -gt 0 ]; then  # a selection (`-m e2e`, a file, -k ...): one process, as given
  exec python -m pytest -q -ra --durations=20 "$@"
fi
# The whole suite in two parts. First every test that can share the machine, on two pytest-xdist
# workers (most of them wait on a training process that uses one of the reference machine's two
# cores). Then the Slurm jobs and the browser tests in one process: the private Slurm cluster is one
# per session, and the browser tour took 98 s beside another worker against 34-43 s alone (measured
# 2026-12-04), more than the second worker saved.
# Every training process of the suite gets one OpenMP thread: torch otherwise starts one per core in
# every process, and runs beside each other (two workers, two ranks, a run beside the browser)
# oversubscribe the two cores (measured 2026-12-04 on 13 trainer tests on two workers: 76 s with
# torch's default, 59 s with one thread; the first part of the suite 540-577 s, then 379 s).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
status=0
python -m pytest -q -ra --durations=20 -n "${NEXA_TEST_WORKERS:-2}" -m "not slurm and not e2e" || status=$?
python -m pytest -q -ra --durations=10 -m "slurm or e2e" || status=$?
exit "$status"
