"""Helpers for pages only: Streamlit caching around nexa_core and common rendering. No business
logic lives here; nexa_core never imports streamlit, so caching is done at this layer.

The leading '_' keeps this module out of any pages/ auto-discovery; app.py lists its pages
explicitly with st.navigation, so it never treats this file as a screen either way."""

from __future__ import annotations

from typing import Any

import streamlit as st

from nexa_core import hardware, planner


@st.cache_resource(ttl=30, show_spinner=False)
def detected_hardware() -> hardware.Hardware:
    """NVML and psutil, read at most every 30 s (NVML init is not free; free memory changes)."""
    return hardware.detect()


@st.cache_resource(max_entries=64, show_spinner="Building the model on the meta device…")
def cached_plan(**fields: Any) -> planner.Plan:
    """make_plan keyed on PlanConfig's fields (the config is a mutable dataclass, so it is built here,
    never hashed). cache_resource, not cache_data: the frozen Plan is shared as is and never
    pickled (no cache of the app's round-trips through pickle). ConfigError is not cached."""
    return planner.make_plan(planner.PlanConfig(**fields), detected_hardware())


def refresh_hardware() -> None:
    """Forget the detected hardware and the plans made with it (free GPU/host memory may have changed)."""
    detected_hardware.clear()
    cached_plan.clear()


def show_problems(problems: list[str]) -> None:
    """Every validation problem in one error block, so the user can fix them all at once."""
    st.error("Please fix:\n\n" + "\n".join(f"- {p}" for p in problems))
