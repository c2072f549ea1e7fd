"""PyCache: a brokerless ZeroMQ mesh of in-memory key-value cache nodes."""

__version__ = "0.1.0"
