"""A1111-compatible HTTP API (/sdapi/v1) over the job backend."""
