"""Calibrate user populations from logged interactions."""
