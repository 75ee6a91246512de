"""Backup Repository: a storage server for end-to-end encrypted (OpenPGP) backups."""

__version__ = "0.1.0"
