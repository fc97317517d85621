import sys

from lib_sdtrain.cli import main

sys.exit(main())
