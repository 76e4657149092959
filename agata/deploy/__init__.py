"""Installing AGATA as a service of the operating system (systemd units)."""
