"""Reports: report.json, report.md, PNG plots; output folders written atomically."""
from .markdown import render_analysis
from .output import atomic_output_dir, check_output_dir, write_json
from .plots import write_plots

__all__ = ["render_analysis", "atomic_output_dir", "check_output_dir", "write_json", "write_plots"]
