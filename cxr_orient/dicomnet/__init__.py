"""The DICOM node: instances received over the network (C-STORE, STOW-RS, DICOMweb pull)
are written to the spool and recorded through :mod:`cxr_orient.ingest`; answers go back
to PACS as DICOM Structured Reports.

One module per concern: ``spool`` (durable, confined writes of received bytes),
``receive`` (the one call that records spooled files), ``recorder`` (recording them in
batches off the network threads, and the startup sweep of what no row names),
``listener`` (C-STORE/C-ECHO SCP), ``pull`` (QIDO-RS/WADO-RS), ``pull_dimse`` (C-FIND,
C-MOVE to the listener), and, as they land,
``policy`` (the accept rules), ``sr`` (the report) and ``destinations`` (C-STORE SCU,
STOW-RS).
"""
