"""Run under torchrun by tests/test_distributed.py: the command line, with one rank made to fail when it starts
quantizing (argv[1]: raise | kill; argv[2]: that rank). Not a test module.

    torchrun --nproc-per-node 2 tests/dist_fault.py raise 1 RECIPE.yaml [smooth-quant options]
"""
import os
import signal
import sys

from smooth_then_quant import stages
from smooth_then_quant.cli import main
from smooth_then_quant.errors import SmoothQuantError

how, bad_rank = sys.argv[1], int(sys.argv[2])
real = stages.quantize_


def failing(*args, **kwargs):
    if int(os.environ["RANK"]) == bad_rank:
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise SmoothQuantError("planted failure in the quantization stage")
    return real(*args, **kwargs)


stages.quantize_ = failing  # looked up when run_quantize calls it
sys.exit(main(sys.argv[3:]))
