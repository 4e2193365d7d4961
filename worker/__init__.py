"""The scoring service: decode, validate, score per batch, deliver; replay and monitoring."""
