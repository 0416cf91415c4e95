"""`python -m headwater.log.embedded SETTINGS_JSON`: run the embedded log server."""

import sys

from headwater.log.embedded.server import main

sys.exit(main())
