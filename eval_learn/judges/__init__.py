"""Judges: detectors and classifiers that decide what an image shows, with recorded settings."""
