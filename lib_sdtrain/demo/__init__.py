"""A demo set: tiny random-weight models (SD, BLIP, WD14) and a small drawn dataset, to try the whole workflow on a
CPU in minutes. The same builders make the test suite's models."""

from lib_sdtrain.demo.make import DemoPaths, demo_paths, make_demo

__all__ = ["DemoPaths", "demo_paths", "make_demo"]
