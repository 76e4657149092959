"""Tests of the cloud side."""
