"""Errors of the store layer. Every message says what the user can do about it."""
from __future__ import annotations


class StoreError(RuntimeError):
    """A store problem the user can fix; the message says how."""


class ModelMismatchError(StoreError):
    """Embeddings of another model are already in this store."""


class StoreVersionError(StoreError):
    """The store's schema version is not one this code can open."""
