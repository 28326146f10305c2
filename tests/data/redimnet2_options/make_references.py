"""Writes the official outputs of small ReDimNet2 layouts that exercise the remaining options.

The ten layouts of ``tests/data/redimnet2`` (copies of ``shared/redimnet2_reference``) leave
some options of the official ``ReDimNet2Wrap`` unused: the 1-D block types ``fc`` and
``conv``, the 2-D block types ``convnext_like_relu`` and ``basic_resnet_fwse``, 2-D stages
with several kernel sizes, ``return_2d_output`` without ``out_channels``, the TF-style front
end without signal normalisation and the torchaudio-style one with it. This script builds
one tiny layout for each with the official code, fills it with the weights of the reference
fill rule (``tests/redimnet2_fill.py``: every state-dict entry except ``spec.*`` is a pure
function of its key and shape; ``spec.*`` keep the values the official code computes), runs
it on the reference test signals and writes ``{name}.json`` next to this script:

- ``name``, ``model_config`` (the keyword arguments of ``ReDimNet2Wrap``), ``option`` (what
  the layout exercises);
- ``input``: the recipe of the input (``wav`` of ``tests/data/redimnet2/reference_outputs.pt``,
  all of it, times ``scale``) with its sum and absolute sum, so a test can check it runs on
  the same signals;
- ``manifest``: ``[key, shape]`` of every state-dict entry, in order;
- ``spec_stats``: sum, absolute sum and shape of every ``spec.*`` buffer (the values
  themselves are not stored: a front end built from the config has to reproduce them);
- ``params``: the official model's parameter count;
- ``output``: the official model's output, ``eval()`` mode, fp32, ``[2, embed_dim]``.

No official code is copied here: only its outputs. Run it with the official package
(PalabraAI/redimnet2, MIT licence) on the path::

    python tests/data/redimnet2_options/make_references.py /path/above/redimnet2
"""
import argparse
import json
import pathlib
import sys

import torch

HERE = pathlib.Path(__file__).resolve().parent
TESTS = HERE.parents[1]
WAV_SOURCE = "tests/data/redimnet2/reference_outputs.pt"

#: The keys every layout shares (those of the reference layouts), made tiny.
BASE = dict(
    F=16, causal="none", embed_dim=8, hop_length=160, pooling_func="ASTP", feat_type="pt",
    global_context_att=True, emb_bn=False, block_1d_type="conv+att", block_2d_type="basic_resnet",
    group_divisor=1,
    spec_params=dict(do_spec_aug=False, freq_mask_width=[0, 6], time_mask_width=[0, 8]),
    C=4, out_channels=None,
    stages_setup=[[[1, 1], 1, 1, [[3, 3]], 4], [[2, 2], 1, 1, [[3, 3]], 4]],
)


def _layout(option, scale=1.0, **changes):
    cfg = json.loads(json.dumps(BASE))
    cfg.update(changes)
    return option, scale, cfg


#: name -> (what it exercises, input scale, model_config). The front-end layouts run on the
#: signals scaled by 0.01: on quiet signals the signal normalisation changes the output
#: by over 0.1 (at full scale the TF front end's mean subtraction hides it to ~2e-4).
LAYOUTS = dict([
    ("o_1d_fc", _layout("block_1d_type 'fc'", block_1d_type="fc")),
    ("o_1d_conv", _layout("block_1d_type 'conv'", block_1d_type="conv")),
    ("o_2d_convnext_relu", _layout(
        "block_2d_type 'convnext_like_relu' (group_divisor 2)", block_2d_type="convnext_like_relu",
        group_divisor=2)),
    ("o_2d_resnet_fwse", _layout(
        "block_2d_type 'basic_resnet_fwse'", block_2d_type="basic_resnet_fwse", out_channels=16)),
    ("o_2d_multi_kernel", _layout(
        "2-D stages with several kernel sizes (ConvNeXt-like, 2 and 3 kernels)",
        block_2d_type="convnext_like",
        stages_setup=[[[1, 1], 1, 2, [[3, 3], [5, 5]], 4],
                      [[2, 2], 2, 1, [[3, 7], [1, 5], [5, 3]], 4]])),
    ("o_2d_output_no_head", _layout(
        "return_2d_output without out_channels", return_2d_output=True)),
    ("o_tf_plain", _layout(
        "feat_type 'tf' without norm_signal", scale=0.01, feat_type="tf")),
    ("o_pt_norm_signal", _layout(
        "feat_type 'pt' with norm_signal", scale=0.01,
        spec_params=dict(BASE["spec_params"], norm_signal=True))),
])


def _stats(tensor):
    t = tensor.detach().to(torch.float64)
    return dict(sum=t.sum().item(), abs_sum=t.abs().sum().item(), shape=list(tensor.shape))


def make(name, wav, ReDimNet2Wrap, fill_tensor):
    option, scale, cfg = LAYOUTS[name]
    wav = wav * scale
    model = ReDimNet2Wrap(**json.loads(json.dumps(cfg)))
    sd = model.state_dict()
    filled = {k: v.clone() if k.startswith("spec.") else fill_tensor(k, v.shape) for k, v in sd.items()}
    model.load_state_dict(filled)
    model.eval()
    with torch.inference_mode():
        out = model(wav)
        again = model(wav)
    assert torch.isfinite(out).all(), name
    assert torch.equal(out, again), name
    return dict(
        name=name,
        option=option,
        model_config=cfg,
        input=dict(source=WAV_SOURCE, key="wav", scale=scale, shape=list(wav.shape),
                   sum=wav.to(torch.float64).sum().item(),
                   abs_sum=wav.to(torch.float64).abs().sum().item()),
        manifest=[[k, list(v.shape)] for k, v in sd.items()],
        spec_stats={k: _stats(v) for k, v in sd.items() if k.startswith("spec.")},
        params=sum(p.numel() for p in model.parameters()),
        output=out.tolist(),
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("official", help="folder holding the official 'redimnet2' package")
    parser.add_argument("--only", nargs="*", default=None, help="layout names (default: all)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(pathlib.Path(args.official).resolve()))
    sys.path.insert(0, str(TESTS))
    from redimnet2 import ReDimNet2Wrap  # the official code
    from redimnet_fill import fill_tensor

    torch.manual_seed(0)
    torch.set_num_threads(1)
    wav = torch.load(TESTS.parent / WAV_SOURCE, weights_only=True)["wav"]
    for name in args.only or LAYOUTS:
        record = make(name, wav, ReDimNet2Wrap, fill_tensor)
        path = HERE / f"{name}.json"
        path.write_text(json.dumps(record, indent=1) + "\n")
        print(f"{path.name}: {path.stat().st_size} bytes, output absmax "
              f"{max(abs(x) for row in record['output'] for x in row):.4f}", file=sys.stderr)


if __name__ == "__main__":
    main()
