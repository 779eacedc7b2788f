"""The writers: turn a Finding and its source images into the DICOM objects sent back to PACS.

sr.py writes the TID 1500 report, sc.py the heatmap Secondary Capture (drawn by overlay.py)."""

from scintnode.write.overlay import render_overlay
from scintnode.write.sc import SC_SERIES_NUMBER, build_heatmap_sc
from scintnode.write.sr import SR_SERIES_NUMBER, build_report

__all__ = ["SC_SERIES_NUMBER", "SR_SERIES_NUMBER", "build_heatmap_sc", "build_report", "render_overlay"]
