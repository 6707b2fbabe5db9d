"""edgeplex: a multi-tenant inference server for edge devices."""

__version__ = "0.1.0"
