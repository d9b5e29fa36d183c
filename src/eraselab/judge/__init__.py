"""Judging generated images: detectors turn images into labelled scores, metrics turn those into numbers."""
