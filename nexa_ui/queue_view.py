"""The run queue as a small section of the Runs page: the runs waiting for a busy device, in order,
each with up / down / cancel. The queue itself lives in the run store (nexa_core/run_queue.py)."""

from __future__ import annotations

import streamlit as st

from nexa_core import monitor, run_queue, runner
from nexa_core.errors import ConfigError
from nexa_core.runstore import RunStore

NOTICE = "queue_notice"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def _move(store: RunStore, run_id: str, where: str) -> None:
    """A callback: the section below is drawn in the new order."""
    try:
        st.session_state[NOTICE] = ("success", _sentence(run_queue.move(store, run_id, where)))
    except ConfigError as exc:  # it started or was cancelled meanwhile
        st.session_state[NOTICE] = ("warning", "; ".join(exc.problems))


def _cancel(store: RunStore, run_id: str) -> None:
    if runner.cancel_queued(run_id, by="user", store=store):
        st.session_state[NOTICE] = ("success", _sentence(run_queue.cancelled(run_id)))
    else:
        st.session_state[NOTICE] = ("warning", run_queue.not_queued(run_id))


def queue_section(store: RunStore) -> None:
    """Nothing when no run waits; else a heading, one line per waiting run, and its buttons."""
    kind, text = st.session_state.pop(NOTICE, (None, None))
    if kind:
        getattr(st, kind)(text)
    rows = run_queue.describe(store, runner.busy_devices(store))
    if not rows:
        return
    st.subheader(f"Queue ({len(rows)} waiting)")
    st.caption(
        "Runs wait here while their device is busy and start in this order when it frees, also with no "
        "browser open (a run that crashes does not block the line). `nexa runs queue` shows the same."
    )
    for row in rows:
        run_id, first, last = row["run_id"], row["position"] == 1, row["position"] == len(rows)
        text, up, down, cancel = st.columns([8, 1, 1, 1.4], vertical_alignment="center")
        text.markdown(
            f"**{row['position']}.** {row['name']} · `{run_id}` · on {row['devices']}"
            + (" · resumes" if row["resume"] else "")
            + f"  \nwaiting for: {row['waiting_for']} · queued {monitor.format_seconds(row['waited_s'])} ago"
        )
        up.button("↑", key=f"queue_up_{run_id}", help="one place earlier", disabled=first,
                  on_click=_move, args=(store, run_id, "up"))  # fmt: skip
        down.button("↓", key=f"queue_down_{run_id}", help="one place later", disabled=last,
                    on_click=_move, args=(store, run_id, "down"))  # fmt: skip
        cancel.button("Cancel", key=f"queue_cancel_{run_id}", help="take it out of the queue; it never starts",
                      on_click=_cancel, args=(store, run_id))  # fmt: skip
