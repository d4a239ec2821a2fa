"""dkimbot: takes a facility's domain from a DKIM/DMARC request mail to a verified setup."""

__version__ = "0.1.0"
