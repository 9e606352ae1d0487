"""Reports: report.json, report.md, PNG plots; output folders written atomically."""
from .markdown import render_analysis
from .plots import write_plots

__all__ = ["render_analysis", "write_plots"]
