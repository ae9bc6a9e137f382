"""On-robot deployment: a trained policy on a rig, with inference off the control loop.

- :mod:`robolearn.deploy.loop`: the deployment loop (time-stamped chunks, latency compensation,
  late-action dropping, chunk blending, safety stops, operator keys), an extension of
  :mod:`robolearn.rollout`;
- :mod:`robolearn.deploy.inference`: where the policy runs (a thread, or a policy server);
- :mod:`robolearn.deploy.server`: ``robolearn serve`` (ZeroMQ, with a version/shape handshake);
- :mod:`robolearn.deploy.inpaint`: real-time-chunking-style inpainting of overlapping chunks;
- :mod:`robolearn.deploy.calibrate`: ``robolearn calibrate latency``;
- :mod:`robolearn.deploy.run`: ``robolearn deploy`` (rig + backend + loop + recording).
"""
