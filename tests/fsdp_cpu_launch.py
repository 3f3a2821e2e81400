"""Run `rlif` under accelerate's FSDP2 on CPU processes (used by tests/test_parallel.py only).

torch's FSDP2 runs on CPU with the gloo backend, but accelerate (1.15) switches to FSDP only on accelerator
devices: with ACCELERATE_USE_CPU its state stays MULTI_CPU and the FSDP plugin is dropped. This launcher
promotes that state to FSDP before rlif builds its Accelerator, so the test runs accelerate's real FSDP2
preparation and rlif's sharded code paths (sampling with gathered parameters, full checkpoints) on CPU.
"""

import sys

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_original_init = AcceleratorState.__init__


def _init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _original_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        # AcceleratorState copies PartialState's fields on every instantiation: promote both
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin


AcceleratorState.__init__ = _init_with_fsdp_on_cpu

if __name__ == "__main__":
    from rlif.cli import main

    sys.exit(main(sys.argv[1:]))
