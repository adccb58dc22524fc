"""`python -m study_runner run|status configs/study_<name>.yaml`: see study_runner.study."""

import sys

from study_runner.study import main

sys.exit(main())
