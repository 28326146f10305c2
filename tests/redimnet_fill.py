"""Deterministic weights for the ReDimNet reference layouts (tests/data).

The fill rule is described in ``tests/data``'s source README
(``shared/redimnet_reference/README.md``): every state-dict entry except the
front-end buffers (``spec.*``) is a pure function of its key and shape, so the
official-format checkpoints used by the parity tests are rebuilt on the fly.
"""
import json
import math
import pathlib
import zlib

import torch

DATA = pathlib.Path(__file__).parent / "data"
_M31 = 0x7FFFFFFF


def _uniform(key, numel):
    """Hash-based uniform numbers in [0, 1) for ``numel`` flat indices of ``key``."""
    seed = zlib.crc32(key.encode("utf-8")) & _M31
    x = (torch.arange(numel, dtype=torch.int64) + seed) & _M31
    x = (x * 0x5BD1E995) & _M31
    x ^= x >> 15
    x = (x * 0x2C1B3C6D) & _M31
    x ^= x >> 12
    x = (x * 0x297A2D39) & _M31
    x ^= x >> 15
    return (x.to(torch.float64) / 2.0**31).to(torch.float32)


def fill_tensor(key, shape):
    """The reference value of state-dict entry ``key`` with ``shape``."""
    shape = tuple(int(s) for s in shape)
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    u = _uniform(key, math.prod(shape)).reshape(shape)
    if key.endswith("running_var"):
        return 0.5 + u
    if key.endswith("running_mean"):
        return 0.2 * (u - 0.5)
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        return (u - 0.5) * 2 * math.sqrt(3.0 / fan_in)
    if key.endswith("weight"):
        return 1 + 0.2 * (u - 0.5)
    return 0.2 * (u - 0.5)


def load_layouts():
    with open(DATA / "official_layouts.json") as f:
        return json.load(f)


def load_reference():
    return torch.load(DATA / "reference_outputs.pt", weights_only=True)


def official_state_dict(name, layouts=None, reference=None):
    """Ordered official-format state dict of layout ``name``."""
    layouts = layouts or load_layouts()
    reference = reference or load_reference()
    fixed = reference["fixed_buffers"][name]
    sd = {}
    for key, shape in layouts["manifests"][name]:
        if key.startswith("spec."):
            sd[key] = fixed[key].clone()
        else:
            sd[key] = fill_tensor(key, shape)
    return sd


def write_official_checkpoint(name, path, layouts=None, reference=None):
    """Save layout ``name`` as an official ReDimNet ``.pt`` file at ``path``."""
    layouts = layouts or load_layouts()
    ckpt = {
        "model_config": layouts["configs"][name],
        "state_dict": official_state_dict(name, layouts, reference),
    }
    torch.save(ckpt, path)
    return path
