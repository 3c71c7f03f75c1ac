"""Helpers for pages only: Streamlit caching around nexa_core and common rendering. No business
logic lives here; nexa_core never imports streamlit, so caching is done at this layer."""

from __future__ import annotations

from typing import Any

import streamlit as st

from nexa_core import hardware, planner


@st.cache_resource(ttl=30)
def detected_hardware() -> hardware.Hardware:
    """NVML and psutil, read at most every 30 s (NVML init is not free; free memory changes)."""
    return hardware.detect()


# cache_resource, not cache_data: a Plan is immutable and shared as is, never pickled.
@st.cache_resource(max_entries=64, show_spinner="Building the model on the meta device…")
def cached_plan(**fields: Any) -> planner.Plan:
    return planner.make_plan(planner.PlanConfig(**fields), detected_hardware())


def show_problems(problems: list[str]) -> None:
    st.error("Please fix:\n\n" + "\n".join(f"- {p}" for p in problems))
