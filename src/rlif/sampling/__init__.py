"""Generation engines: rlif's own KV-cache sampler (`native`) and, later, others; keyed randomness (`keys`).

This file holds only names the command line and the config need without importing torch.
"""

DECODE_MODES = ("dynamic", "static", "compiled")  # rlif.sampling.native.sample(decode=...), RolloutConfig.decode
