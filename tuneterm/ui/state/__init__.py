"""The UI's pure state: what the screens show, kept in plain objects that import no textual.

The Draft (the run config being edited), the wizard's planning (what was read of the model and the data, and the
plan made from them) and the RunView (what a run's events say) can be built and tested without a terminal; the
screens only show them and feed them what their widgets and workers report.
"""
