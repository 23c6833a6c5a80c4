"""chimp-worker: CHiMP crystallisation-image analysis from RabbitMQ events into ISPyB."""

__version__ = "0.1.0"
