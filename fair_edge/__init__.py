"""fair-edge: FAIR anomaly detection from normal images to an inspection station."""

__version__ = "0.1.0"
