"""Hardware drivers: cameras, arm controllers, teleoperators (connect / read or act / disconnect).

- ``shm``: the shared-memory ring device processes write into and control loops read from.
- ``cameras``: RealSense (live or a recording standing in for one) and UVC/OpenCV cameras, one process each.
- ``listing``: what is connected (``robolearn hardware list``).
"""
