"""Bundled synthetic utility-domain datasets and the deterministic scripts that generate them."""
