"""The panel's Streamlit layer outside pages/: the sign-in gate (auth), caching and rendering helpers
(shared) and the Launch form's field mapping (launch_form). Kept out of pages/ because Streamlit
serves every file there as a page, signed in or not."""
