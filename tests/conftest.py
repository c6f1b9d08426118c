"""Test-wide setup: four CPU devices, so disaggregated prefill/decode meshes can be built.

Set before anything imports JAX (conftest files load first); single-device tests just use
device 0 and run no slower.
"""
import os

_FLAG = "--xla_force_host_platform_device_count=4"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
