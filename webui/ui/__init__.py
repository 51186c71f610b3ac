"""Gradio front end: the page (blocks) and the UI-to-request mapping."""
