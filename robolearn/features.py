"""The one feature type: shape, dtype and kind of a per-sample array, from rig to store to policy.

Defined beside the store's schema (the lowest layer) and re-exported here so that rigs, policies
and tools name it without reaching into the store.
"""

from robolearn.data.schema import CONTROL_STREAM, KINDS, Feature

__all__ = ["CONTROL_STREAM", "KINDS", "Feature"]
