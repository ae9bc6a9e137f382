"""Hardware drivers: RealSense cameras, arm controllers, teleoperators (connect / read or act / disconnect)."""
