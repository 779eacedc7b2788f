"""scintnode: a DICOM node that runs nuclear-medicine and CT networks and returns SR, SC and SEG to PACS."""

__version__ = "0.1.0"
