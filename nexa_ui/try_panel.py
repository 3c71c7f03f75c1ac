"""The "Try the model" panel of the Monitor and Runs pages: a run's latest checkpoint (exported once
into its folder) or an exported folder, on text the user types; nexa_core/try_model.py does the work.
The loaded pipeline is cached per folder (a few seconds to load), the last answer kept per panel."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import streamlit as st

from nexa_core import paths, try_model
from nexa_core.enums import Task
from nexa_core.errors import ConfigError
from nexa_ui.shared import show_problems

PROMPTS = {
    Task.NER: ("Sentence to tag", "Crew replaced the 12 kV recloser on Feeder 1104 under WO-483920 ."),
    Task.CLASSIFICATION: ("Text to classify", "Power is out on Elm Avenue since the storm last night."),
    Task.EMBEDDING: ("First sentence", "Gas smell reported near the regulator station."),
    Task.CAUSAL_LM: (
        "Prompt",
        "Field report: crew arrived at Sunset substation at 4:15 pm.\nQuestion: When did the crew arrive?",
    ),  # fmt: skip
}
_COLOURS = ("#fde68a", "#bfdbfe", "#bbf7d0", "#fecaca", "#ddd6fe", "#fed7aa")


@st.cache_resource(max_entries=2, show_spinner="Loading the model (a few seconds the first time)…")
def _loaded(folder: str, task: str | None, stamp: float) -> try_model.Loaded:
    """One pipeline per (folder, task); ``stamp`` (config.json's mtime) makes a re-export a new entry."""
    return try_model.load(folder, task)


def _answer(folder: Path, task: Task | None, key: str, **inputs: Any) -> None:
    try:
        model = _loaded(
            str(folder), None if task is None else task.value, (folder / "config.json").stat().st_mtime
        )
        st.session_state[f"{key}_try_result"] = try_model.predict(model, **inputs)
    except ConfigError as exc:
        st.session_state.pop(f"{key}_try_result", None)
        show_problems(exc.problems)


def try_panel(
    key: str, run_id: str | None = None, folder: str | None = None, task: str | None = None
) -> None:
    """The form and the last answer, for run ``run_id`` (its ``task``) or an exported ``folder``."""
    try:
        task_ = Task.parse(task, "task") if task else try_model.task_of(Path(folder or ""))
    except (ConfigError, ValueError) as exc:
        show_problems(getattr(exc, "problems", None) or [str(exc)])
        return
    label, example = PROMPTS[task_]
    with st.form(f"{key}_try_form"):
        if task_ is Task.CAUSAL_LM:
            text = st.text_area(label, key=f"{key}_try_text", placeholder=example, height=100)
            c1, c2 = st.columns(2)
            style = c1.radio("Mode", ["answer an instruction", "continue the text"], key=f"{key}_try_mode",
                             horizontal=True, help=f"an instruction ends with {try_model.ANSWER_CUE.strip()!r}, as "
                             "the bundled instruction sample's prompts do")  # fmt: skip
            tokens = c2.number_input("New tokens", value=40, step=1, key=f"{key}_try_tokens")
        else:
            text = st.text_input(label, key=f"{key}_try_text", placeholder=example)
            style, tokens = None, 40
        second = (
            st.text_input(
                "Second sentence", key=f"{key}_try_second", placeholder="Customer smells gas at the meter."
            )
            if task_ is Task.EMBEDDING
            else None
        )
        pressed = st.form_submit_button("Try it")
    if pressed:
        try:
            with st.spinner("Exporting the latest checkpoint (once per checkpoint)…"):
                where = try_model.run_folder(run_id) if run_id else Path(folder or "")
        except ConfigError as exc:
            show_problems(exc.problems)
            return
        _answer(where, None if run_id is None else task_, key, text=text, second=second,
                max_new_tokens=int(tokens), instruction=style == "answer an instruction")  # fmt: skip
    result = st.session_state.get(f"{key}_try_result")
    if result and result.get("task") == task_.value:
        _show(result)


def folder_panel(key: str) -> None:
    """Try any exported folder inside NEXA_HOME (a folder typed in the browser stays inside it)."""
    typed = st.text_input("Exported model folder", key=f"{key}_try_folder",
                          placeholder=str(paths.nexa_home() / "exports" / "RUN_ID"))  # fmt: skip
    if not typed.strip():
        return
    try:
        folder = paths.inside_home(typed.strip(), "folder")
        problems = try_model.folder_problems(folder)
    except ConfigError as exc:
        problems = exc.problems
    if problems:
        show_problems(problems)
        return
    try_panel(f"{key}_folder", folder=str(folder))


def _show(result: dict[str, Any]) -> None:
    task = Task(result["task"])
    if task is Task.NER:
        colour = {}
        for e in result["entities"]:
            colour.setdefault(e["label"], _COLOURS[len(colour) % len(_COLOURS)])
        pieces = [
            html.escape(piece) if label is None else
            f'<mark style="background:{colour[label]};padding:0 .25em;border-radius:.25em">{html.escape(piece)}'
            f' <b style="font-size:.75em">{html.escape(label)}</b></mark>'
            for piece, label in result["spans"]
        ]  # fmt: skip
        st.markdown(f'<p class="nexa-tagged">{"".join(pieces)}</p>', unsafe_allow_html=True)
        if result["entities"]:
            st.dataframe(result["entities"], hide_index=True, column_order=["text", "label", "score"])
        else:
            st.info("No entities found in this sentence (every word tagged O).")
    elif task is Task.CLASSIFICATION:
        best = result["labels"][0]
        st.metric("Predicted label", best["label"], f"score {best['score']:.3f}", delta_color="off")
        st.dataframe(result["labels"], hide_index=True)
    elif task is Task.EMBEDDING:
        st.metric(
            "Cosine similarity", f"{result['similarity']:.3f}", help="1: same meaning; near 0: unrelated"
        )
    else:
        st.caption("The model's continuation:")
        st.code(result["text"] or "(nothing generated: the model ended the text at once)", language="text")
