"""How scintnode names itself to its DICOM peers (PS3.7 D.3.3.2, PS3.10 7.1): in the associations it accepts
and requests, and in the file meta of the files it writes. A PACS administrator tracing an association sees
scintnode, not the library underneath."""

from __future__ import annotations

from scintnode import __version__

# A UUID-derived UID (PS3.5 B.2), made once for scintnode; it names the implementation, not a release.
IMPLEMENTATION_CLASS_UID = "2.25.196822657353379696085557673114795240598"
IMPLEMENTATION_VERSION_NAME = f"SCINTNODE_{__version__}"[:16]  # SH, at most 16 characters
