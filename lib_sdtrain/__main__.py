import sys

from lib_sdtrain.main import main

sys.exit(main())
