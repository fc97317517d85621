"""A small, faithful stand-in for the parts of stable-diffusion-webui v1.10.1's `modules` package that SD-Train's
host adapter (lib_sdtrain/host/webui.py) and scripts/sdtrain.py use: same module names, same function signatures,
same behaviour where the adapter depends on it (see each module's docstring for the WebUI file it follows).

It is written from reading the WebUI's source, not copied from it, and it is deliberately incomplete: anything
the adapter does not touch is left out. It only proves that the adapter uses the API as the WebUI defines it; the
real WebUI is checked separately (a manual run in a v1.10.1 install, see the report in tests/host/).

Tests put this folder on sys.path through the `webui` fixture in tests/host/conftest.py, never globally.
Command-line options come from $SDTRAIN_STUB_ARGS (the real WebUI parses sys.argv), folders from --data-dir.
"""
