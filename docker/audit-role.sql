-- Read-only audit roles for the cxr-orient database (PostgreSQL).
--
-- Run once per database, as its owner or a superuser, after `cxr-orient db upgrade`
-- (and again after any migration that adds a table or a column):
--
--   psql -v ON_ERROR_STOP=1 -d cxr -f docker/audit-role.sql
--
-- Two group roles (NOLOGIN); give people a login role that is a member:
--
--   CREATE ROLE alice LOGIN PASSWORD '...' IN ROLE cxr_audit;        -- sees PHI
--   CREATE ROLE bob   LOGIN PASSWORD '...' IN ROLE cxr_audit_deid;   -- no PHI columns
--
-- cxr_audit       SELECT on every table: the full audit trail, PHI included
--                 (studies.patient_id, instances.file_path, the DICOM UIDs).
-- cxr_audit_deid  SELECT on every column except studies.patient_id and
--                 instances.file_path / error_message (messages name the file).
-- Neither can INSERT, UPDATE, DELETE, TRUNCATE or create anything.
-- See docs/security.md.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cxr_audit') THEN
        CREATE ROLE cxr_audit NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cxr_audit_deid') THEN
        CREATE ROLE cxr_audit_deid NOLOGIN;
    END IF;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO cxr_audit, cxr_audit_deid',
                   current_database());
END
$$;

-- Nobody but the owner creates objects in the schema.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO cxr_audit, cxr_audit_deid;

-- Full read access (PHI included).
GRANT SELECT ON ALL TABLES IN SCHEMA public TO cxr_audit;
REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER
    ON ALL TABLES IN SCHEMA public FROM cxr_audit;
-- Tables later created by this script's runner (migrations) are readable too.
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO cxr_audit;

-- De-identified read access: column grants, PHI columns left out.
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM cxr_audit_deid;
GRANT SELECT (id, study_instance_uid, created_at) ON studies TO cxr_audit_deid;
GRANT SELECT (id, study_id, sop_instance_uid, series_instance_uid, file_sha256, file_size,
              modality, transfer_syntax_uid, header_view_position, status, error_code,
              attempts, enqueued_at, started_at, finished_at, updated_at)
    ON instances TO cxr_audit_deid;
GRANT SELECT ON predictions, model_versions, model_events, labels TO cxr_audit_deid;
