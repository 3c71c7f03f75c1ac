#!/usr/bin/env bash
# Start the NEXA panel on http://127.0.0.1:8501 (creates the environment on first use).
# NEXA_ADDRESS / NEXA_PORT change where it listens; beyond loopback `nexa serve` refuses to start
# without NEXA_ACCESS_TOKEN or OIDC sign-in (docs/SECURITY.md).
source "$(dirname "$0")/env.sh"
exec python -m nexa_core serve "$@"
