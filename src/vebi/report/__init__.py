"""The HTML report of a run: ``build_report(run_dir)`` reads the run folder and writes a static page.

``collect_run`` (module ``collect_run``) is the one reader of the run folder and documents which
files and JSON keys each stage must write; ``render`` writes the page and its images.
"""

from vebi.report.collect_run import ReportData, collect_run
from vebi.report.render import Report, build_report, default_output, write_report

__all__ = ["Report", "ReportData", "build_report", "collect_run", "default_output", "write_report"]
