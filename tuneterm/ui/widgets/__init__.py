"""Widgets of the app: the wizard's steps, the plan panel, charts and the data preview."""
