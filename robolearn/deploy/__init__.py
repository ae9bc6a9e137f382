"""On-robot deployment: policy runner with workspace box, speed/step limits, watchdog, stop on exit."""
