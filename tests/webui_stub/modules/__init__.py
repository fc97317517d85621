"""A small, faithful stand-in for the parts of stable-diffusion-webui v1.10.1's `modules` package that SD-Train's
host adapter (lib_sdtrain/host/webui.py) and scripts/sdtrain.py use: same module names, same function signatures,
same behaviour where the adapter depends on it (see each module's docstring for the WebUI file it follows).

It is written from reading the WebUI's v1.10.1 source, not copied from it, and it is deliberately incomplete:
anything the adapter does not touch is left out. It shows that the adapter uses the API as that source defines it;
the real WebUI is checked separately, by installing SD-Train into a v1.10.1 WebUI (not part of this test suite).

Tests put this folder on sys.path through the `webui` fixture in tests/host/conftest.py, never globally.
Command-line options come from $SDTRAIN_STUB_ARGS (the real WebUI parses sys.argv), folders from --data-dir.
"""
