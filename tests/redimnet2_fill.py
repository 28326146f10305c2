"""Deterministic weights for the ReDimNet2 reference layouts (tests/data/redimnet2).

The fill rule is the ReDimNet one (``redimnet_fill.fill_tensor``, described in the source
README of ``tests/data/redimnet2``): every state-dict entry except the front-end buffers
(``spec.*``, stored in ``reference_outputs.pt``) is a pure function of its key and shape,
so the official-format ReDimNet2 checkpoints of the parity tests are rebuilt on the fly.
"""
import json
import pathlib

import torch

from redimnet_fill import fill_tensor

DATA = pathlib.Path(__file__).parent / "data" / "redimnet2"
NAMES = ["b0", "b1", "b2", "b3", "b4", "b5", "b6", "x_b2_tf", "x_b6_dual_gnorm", "x_variants"]


def load_layouts():
    with open(DATA / "official_layouts.json") as f:
        return json.load(f)


def load_reference():
    return torch.load(DATA / "reference_outputs.pt", weights_only=True)


def official_state_dict(name, layouts=None, reference=None):
    """Ordered official-format ReDimNet2 state dict of layout ``name``."""
    layouts = layouts or load_layouts()
    reference = reference or load_reference()
    fixed = reference["fixed_buffers"][name]
    return {key: fixed[key].clone() if key.startswith("spec.") else fill_tensor(key, shape)
            for key, shape in layouts["manifests"][name]}


def write_official_checkpoint(name, path, layouts=None, reference=None):
    """Save layout ``name`` as an official ReDimNet2 ``.pt`` file at ``path``."""
    layouts = layouts or load_layouts()
    torch.save({"model_config": layouts["configs"][name],
                "state_dict": official_state_dict(name, layouts, reference)}, path)
    return path
