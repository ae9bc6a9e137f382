"""The demonstration store: Zarr v3 layout, writer, reader, alignment, windows, normalisation, recording."""
