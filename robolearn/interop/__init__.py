"""Interoperability with other robot-learning formats. Imports ``robolearn.data``, never the reverse."""
