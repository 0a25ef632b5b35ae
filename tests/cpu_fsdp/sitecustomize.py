"""Test-only shim (on PYTHONPATH of the tests' training subprocesses): let accelerate enable FSDP on CPU.

accelerate 1.x selects ``DistributedType.FSDP`` only on accelerators; on CPU an FSDP plugin is dropped and
the run becomes plain DDP. torch's FSDP2 (``fully_shard``) itself runs on CPU with gloo, so with this shim
the host's unmodified FSDP2 code path shards for real on a CPU-only machine. Nothing is patched unless
``UNIGAP_TEST_CPU_FSDP=1``.
"""

import os

if os.environ.get("UNIGAP_TEST_CPU_FSDP") == "1":
    import accelerate.state as _state
    from accelerate.utils import DistributedType as _DT

    _init = _state.AcceleratorState.__init__

    def _cpu_fsdp_init(self, *args, fsdp_plugin=None, **kwargs):
        _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == _DT.MULTI_CPU:
            self.distributed_type = _DT.FSDP
            self.fsdp_plugin = fsdp_plugin
            # as accelerate's own __init__ ends: every later AcceleratorState() copies PartialState's distributed type
            # over its own, so without this the run falls back to MULTI_CPU after its first re-construction (the
            # optimizer's), and accelerator.get_state_dict then returns the sharded DTensors instead of full tensors
            _state.PartialState._shared_state["distributed_type"] = _DT.FSDP

    _state.AcceleratorState.__init__ = _cpu_fsdp_init
