"""Process plumbing every command shares: settings, logs, shutdown deadline, CLI option types."""
