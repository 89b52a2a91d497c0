"""An external trainer for `aegis client --train-cmd`, as a PyTorch script would be one:
reads the global model (safetensors) from $AEGIS_GLOBAL_MODEL, "trains" by adding
STEP to every value, writes the result to $AEGIS_LOCAL_MODEL and its metrics to
$AEGIS_METRICS. Usage: python train_step.py STEP NUM_EXAMPLES
"""
import json
import os
import sys

import numpy as np
from safetensors.numpy import load_file, save_file

step = float(sys.argv[1])
num_examples = int(sys.argv[2])
tensors = load_file(os.environ["AEGIS_GLOBAL_MODEL"])
local = {name: (t + np.float32(step)).astype(np.float32) for name, t in tensors.items()}
save_file(local, os.environ["AEGIS_LOCAL_MODEL"])
with open(os.environ["AEGIS_METRICS"], "w") as f:
    json.dump({"num_examples": num_examples, "loss": 0.25, "accuracy": 0.75}, f)
