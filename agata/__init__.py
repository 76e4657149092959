"""AGATA: a control plane for federated learning on fleets of devices."""

__version__ = "0.1.0"
