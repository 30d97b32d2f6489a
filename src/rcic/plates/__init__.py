"""Plate post-processing (siRNA groups, plate orders, one siRNA per well, calibration from the
plates) and submissions."""
