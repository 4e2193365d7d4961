"""The trainer: data-quality report, schema and reference, fitting, publishing a version."""
