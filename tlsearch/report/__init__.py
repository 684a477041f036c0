"""Seeing a study: where it stands, its leaderboard, and a self-contained HTML report with plots.

Python API (the ``tlsearch status`` and ``tlsearch report`` commands are thin over it)::

    from tlsearch.report import study_status, write_report

    study_status("runs/quickstart")            # dict: counts by state, best trial, time, ETA
    study_status("postgresql://…/db", study_name="flowers")   # or a journal file, sqlite:///…
    write_report("runs/quickstart", png=True)  # runs/quickstart/report.html + report_plots/*.png

Other ways to look at a study — it is an ordinary Optuna study, and its folder has a trail. A
study folder made by this version keeps its storage in the journal file
``runs/<name>/study.journal``; one made earlier has the SQLite file ``runs/<name>/study.db``
(``sqlite:///runs/<name>/study.db``); a shared study lives at its ``postgresql://…`` URL. Each of
the tools below takes any of them:

* **optuna-dashboard** (``pip install optuna-dashboard``) serves a live web view of the storage,
  including each trial's user attributes (``choices``, ``history``, ``metrics``, ``params``)::

      optuna-dashboard sqlite:///runs/<name>/study.db
      optuna-dashboard runs/<name>/study.journal

* **Optuna's own CLI** reads the same storage (a journal file is recognised by being a file)::

      optuna studies --storage sqlite:///runs/<name>/study.db
      optuna trials --storage sqlite:///runs/<name>/study.db --study-name <name> -f json
      optuna best-trial --storage runs/<name>/study.journal --study-name <name>

* **tlsearch itself**: ``tlsearch status runs/<name>`` (or ``tlsearch status STORAGE --study
  NAME``, ``--json`` for scripts) and ``tlsearch report runs/<name> --png``.

* **The trail** ``runs/<name>/trail.jsonl``: one JSON object per line, appended by the built-in
  ``tlsearch_builtins.trail`` plugin through the lifecycle hooks, with ``time``, ``pid``, ``event``
  (``study_start``, ``trial_start`` + ``choices``, ``epoch_end`` + ``epoch``/``metrics``,
  ``trial_end`` + ``state``/``value``/``metrics``, ``study_end``) and ``trial``. Read it with
  ``jq`` or ``pandas.read_json(path, lines=True)``; it survives a crash and several workers may
  append to it at once.

The report's learning curves come from each trial's ``history`` user attribute (the trail has the
same numbers), so a report can be drawn from a storage URL alone.
"""

from tlsearch.report._html import ReportFiles, render_html, write_report
from tlsearch.report._plots import Plot, pareto_front
from tlsearch.report._source import StudySource, open_source, plugin_labels
from tlsearch.report._status import (
    format_duration,
    format_leaderboard,
    format_status,
    leaderboard,
    study_status,
)

__all__ = [
    "Plot",
    "ReportFiles",
    "StudySource",
    "format_duration",
    "format_leaderboard",
    "format_status",
    "leaderboard",
    "open_source",
    "pareto_front",
    "plugin_labels",
    "render_html",
    "study_status",
    "write_report",
]
