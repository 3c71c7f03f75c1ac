"""The panel's Streamlit layer outside pages/: the sign-in gate (auth), NEXA's guard in front of
Streamlit's endpoints (guard) and the server `nexa serve` runs with it (server), caching and
rendering helpers (shared) and the Launch form's field mapping (launch_form). Kept out of pages/
because Streamlit serves every file there as a page, signed in or not."""
