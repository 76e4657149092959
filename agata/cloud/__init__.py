"""The cloud side of AGATA: task manager, device registry, bundle store and gateway."""
