"""A `python -m pip` that installs nothing: it records its arguments in $SDTRAIN_TEST_PIP_LOG and fails, so a test
sees every pip run that install.py starts without the WebUI's launch module."""

import json
import os
import sys

with open(os.environ["SDTRAIN_TEST_PIP_LOG"], "a", encoding="utf-8") as f:
    f.write(json.dumps({"argv": sys.argv[1:]}) + "\n")
sys.exit(3)
