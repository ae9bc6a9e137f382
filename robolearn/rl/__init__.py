"""Online residual RL on top of a frozen base policy, in simulation and on the robot."""
