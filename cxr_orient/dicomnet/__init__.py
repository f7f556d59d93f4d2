"""The DICOM node: instances received over the network (C-STORE, STOW-RS, DICOMweb pull)
are written to the spool and recorded through :mod:`cxr_orient.ingest`; answers go back
to PACS as DICOM Structured Reports.

One module per concern: ``spool`` (durable, confined writes of received bytes),
``receive`` (the one call that records spooled files), ``policy`` (the accept rules),
``recorder`` (recording spooled files in batches off the network threads, and the
startup sweep of what no row names), ``listener`` (C-STORE/C-ECHO SCP), ``admission``
(the listener's connection and association limits), ``scp`` (its pynetdicom server:
timeouts, PDU reads, each connection's books), ``receiving`` (a C-STORE dataset
received onto disk, bounded, no partial left), ``multipart`` and
``stow`` (STOW-RS in), ``pull`` (QIDO-RS/WADO-RS), ``pull_dimse`` (C-FIND, C-MOVE to the
listener), ``retention`` (the spool purge), ``sr`` (the report), ``destinations``
(C-STORE SCU, STOW-RS) and ``delivery`` (the outbox: claim, build, send, record, back off);
``corrections`` (IHE IOCM: a corrected replacement and a rejection note; builders only).
"""
