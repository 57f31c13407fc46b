"""Simulated hardware at the lowest layer: pins, probes, boards and bootloaders.

Product code: the demo and the tests drive the same code paths a real station drives, with these
devices behind the real interfaces. The real station path never imports this package.
"""
