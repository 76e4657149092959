"""The command line: the only place that wires settings, buses, stores and services."""
