"""The Textual app: a start screen, the setup wizard, and (in later screens) the monitor.

Thin by design: every number it shows comes from the core (config, data, plan, engine), called in worker threads
for anything slow and on every keystroke for the per-keystroke plan. Importing any module here must not import
torch or the Hugging Face libraries (a test checks it), so the first screen paints fast.
"""
