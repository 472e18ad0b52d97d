"""anonymize: batch image anonymization with verifiable protection."""
__version__ = "0.1.0"
