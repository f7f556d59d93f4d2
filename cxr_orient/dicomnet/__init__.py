"""The DICOM node: instances received over the network (C-STORE, STOW-RS, DICOMweb pull)
are written to the spool and recorded through :mod:`cxr_orient.ingest`; answers go back
to PACS as DICOM Structured Reports.

One module per concern: ``spool`` (durable, confined writes of received bytes), and, as
they land, ``policy`` (the accept rules), ``listener`` (C-STORE/C-ECHO SCP), ``pull``
(QIDO-RS/WADO-RS), ``sr`` (the report), ``destinations`` (C-STORE SCU, STOW-RS)
and ``delivery`` (the outbox: claim, build, send, record, back off).
"""
