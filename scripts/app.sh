#!/usr/bin/env bash
# Start the NEXA panel on http://127.0.0.1:8501 (creates the environment on first use).
source "$(dirname "$0")/env.sh"
exec streamlit run app.py --server.address "${NEXA_ADDRESS:-127.0.0.1}" --server.port "${NEXA_PORT:-8501}" "$@"
