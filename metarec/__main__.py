import os
import sys

from metarec.cli import main

code = main()
if "WORLD_SIZE" in os.environ:  # under torchrun: leave the process group, and end at once
    from metarec.parallel.groups import end_torchrun_process

    code = end_torchrun_process(code)
sys.exit(code)
