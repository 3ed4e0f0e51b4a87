"""The run report: one self-contained ``report.html`` per sleep cycle.

:mod:`reverie.report.collect` gathers what a run left behind (state file, phase
logs, the evaluation's ``eval.json``); :mod:`reverie.report.render` draws the
plots as inline SVG with matplotlib and fills the page template.  No external
assets: the file opens anywhere, offline, and can be attached to a ticket.
"""

from reverie.report.render import write_report

__all__ = ["write_report"]
