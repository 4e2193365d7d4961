"""The model registry: versioned, hashed artifacts, promotion rules, local and object storage."""
