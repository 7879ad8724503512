"""Simulators speaking the devices' real wire protocols, and the physics that couples them."""
