"""Task bundles on the cloud: each task's files on disk, their rules and the undo journal."""
