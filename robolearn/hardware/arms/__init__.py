"""Arms: one driver interface (:class:`Arm`), one servo-rate controller process, and the client a rig
drives it with (:func:`open_arm` -> :class:`ArmClient`).

Drivers: UR CB3/e-Series (ur-rtde), Franka (franky-control), UFactory xArm (xarm-python-sdk),
SO-100/SO-101 (Feetech bus) and Koch (Dynamixel bus), and the MuJoCo twin of a sim task. Vendor SDKs
are optional extras (``pip install 'robolearn[ur]'``); a missing one is a one-line install hint.
"""

from robolearn.hardware.arms.base import Arm, ArmConfig, ArmState, SafetyLimits, import_sdk, make_driver
from robolearn.hardware.arms.controller import ArmClient, open_arm

__all__ = [
    "Arm",
    "ArmClient",
    "ArmConfig",
    "ArmState",
    "SafetyLimits",
    "import_sdk",
    "make_driver",
    "open_arm",
]
