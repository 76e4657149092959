"""What cloud and edge share: operation names, request/reply models, notifications."""
