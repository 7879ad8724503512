"""trackerdcs: a Detector Control System for silicon-tracker module test labs."""

__version__ = "0.1.0"
