"""Streamlit pages of the fedguard assistant; `assistant/app.py` wires them into one app."""
