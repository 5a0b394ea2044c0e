"""A benchmark harness for generalizable deepfake detection."""

__version__ = "0.1.0"
