#!/usr/bin/env bash
# Create the same environment as scripts/app.sh, then run the whole test suite.
source "$(dirname "$0")/env.sh"
export NEXA_HOME="$(mktemp -d)/nexa_home"  # tests never touch the user's runs
exec python -m pytest -q -ra "$@"
