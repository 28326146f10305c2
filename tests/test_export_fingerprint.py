"""Which model an exported file embeds with (issue 28, export items): the model fingerprint in the
ONNX file, the IR and the export record beside them, checked when a runtime wrapper opens a file;
a foreign model refused in one line."""
import hashlib
import importlib.util
import re
import shutil
import warnings

import numpy as np
import pytest
import torch

from mrl_testutils import speaker_voice, write_tiny_model
from speechbrain_mrl import cli
from speechbrain_mrl.export import onnx as ex
from speechbrain_mrl.model.folder import model_fingerprint

pytest.importorskip("onnxruntime", reason='ONNX export needs the export extra: pip install -e ".[export]"')
pytest.importorskip("onnxscript", reason='ONNX export needs the export extra: pip install -e ".[export]"')

#: Whether the OpenVINO runtime is installed (the ``openvino`` extra; the test extra has it).
HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not HAVE_OPENVINO, reason='OpenVINO is not installed '
                                                              '(pip install -e ".[openvino]")')


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Two tiny models of one architecture (other weights), each exported by the command:
    ``{"a": (folder, out), "b": (folder, out)}``, ``out/m.onnx`` (+ ``m.xml``/``m.bin``; model
    ``a`` also ``m.int8.onnx``)."""
    root = tmp_path_factory.mktemp("fingerprint")
    models = {}
    for name, seed in (("a", 0), ("b", 1)):
        folder, _, _ = write_tiny_model(root / name / "model", seed=seed)
        out = root / name / "out"
        cli.main(["export", "--model_folder", str(folder), "--onnx", str(out / "m.onnx"),
                  *(["--int8", str(out / "m.int8.onnx")] if name == "a" else []),
                  *(["--openvino", str(out / "m.xml")] if HAVE_OPENVINO else [])])
        models[name] = folder, out
    return models


def _copy(src, dest, *names):
    """Copies the ``names`` folder ``src`` has into ``dest`` (created); returns ``dest``.

    (An export record the export did not write is left out: the test then fails on what a
    runtime wrapper does with the files, not on a missing file.)
    """
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (src / name).exists():
            shutil.copyfile(src / name, dest / name)
    return dest


def _clips():
    """A zero-padded batch of two voices and their relative lengths."""
    a, b = speaker_voice(3, 0, 1.2), speaker_voice(4, 1, 0.8)
    wavs = torch.stack([a, torch.nn.functional.pad(b, (0, len(a) - len(b)))])
    return wavs, torch.tensor([1.0, len(b) / len(a)])


def _without_metadata(src, dest):
    """``src`` as an older export wrote it: no ``speechbrain_mrl.*`` metadata_props."""
    import onnx

    model = onnx.load(str(src))
    kept = [p for p in model.metadata_props if not p.key.startswith("speechbrain_mrl.")]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(dest))
    return dest


def _one_line_error(make, match):
    """``make()`` raises ValueError matching ``match`` in one line; returns the message."""
    with pytest.raises(ValueError, match=match) as err:
        make()
    assert "\n" not in str(err.value), str(err.value)
    return str(err.value)


def test_export_records_the_model_fingerprint_in_every_file(exports):
    """Regression (issue 28): no exported file said which model it was exported from."""
    import onnx

    folder, out = exports["a"]
    sha = model_fingerprint(folder)
    for name in ("m.onnx", "m.int8.onnx"):
        props = {p.key: p.value for p in onnx.load(str(out / name)).metadata_props}
        assert props["speechbrain_mrl.model_sha256"] == sha, name
        assert props["speechbrain_mrl.export_format"] == ex.EXPORT_FORMAT, name
        assert (props["speechbrain_mrl.min_samples"], props["speechbrain_mrl.hop_length"]) == ("257", "160")
        assert ex._read_record(ex.record_path(out / name))["model_sha256"] == sha, name
        assert ex.OnnxEncoder(out / name).model_sha256 == sha
    if HAVE_OPENVINO:
        import openvino as ov

        from speechbrain_mrl.export.openvino import OpenVinoEncoder

        ir = ov.Core().read_model(str(out / "m.xml"))
        assert ir.get_rt_info(["speechbrain_mrl", "model_sha256"]).astype(str) == sha
        weights = hashlib.sha256((out / "m.bin").read_bytes()).hexdigest()
        assert ir.get_rt_info(["speechbrain_mrl", "weights_sha256"]).astype(str) == weights
        assert ex._read_record(ex.record_path(out / "m.xml"))["model_sha256"] == sha
        for name in ("m.onnx", "m.xml"):
            assert OpenVinoEncoder(out / name, precision="fp32").model_sha256 == sha


def test_a_swapped_onnx_is_refused_naming_the_file_and_both_models(exports, tmp_path):
    """Regression (issue 28): another model's ONNX file put in place of an export ran silently."""
    (folder_a, out_a), (folder_b, out_b) = exports["a"], exports["b"]
    sha_a, sha_b = model_fingerprint(folder_a), model_fingerprint(folder_b)
    swapped = _copy(out_a, tmp_path / "swapped", "m.onnx.json")
    shutil.copyfile(out_b / "m.onnx", swapped / "m.onnx")
    message = rf"{re.escape(str(swapped / 'm.onnx'))} is an export of model {sha_b}, but " \
              rf"m\.onnx\.json beside it says model {sha_a}: a swapped or stale file"
    _one_line_error(lambda: ex.OnnxEncoder(swapped / "m.onnx"), message)
    # the fingerprint a caller has (an index's, a model folder's) is checked too
    _one_line_error(lambda: ex.OnnxEncoder(out_b / "m.onnx", model_sha256=sha_a),
                    rf"is an export of model {sha_b}, but the model_sha256 asked for says model {sha_a}")
    # a file recording nothing under an export record: not the file that was exported
    _without_metadata(out_a / "m.onnx", swapped / "m.onnx")
    _one_line_error(lambda: ex.OnnxEncoder(swapped / "m.onnx"),
                    rf"m\.onnx records no export metadata, but m\.onnx\.json beside it says model {sha_a}")
    if HAVE_OPENVINO:
        from speechbrain_mrl.export.openvino import OpenVinoEncoder

        shutil.copyfile(out_b / "m.onnx", swapped / "m.onnx")
        _one_line_error(lambda: OpenVinoEncoder(swapped / "m.onnx", precision="fp32"), message)
        ir = _copy(out_b, tmp_path / "ir", "m.xml", "m.bin")  # a whole IR of b under a's record
        _copy(out_a, ir, "m.xml.json")
        _one_line_error(lambda: OpenVinoEncoder(ir / "m.xml", precision="fp32"),
                        rf"m\.xml is an export of model {sha_b}, but m\.xml\.json beside it says "
                        rf"model {sha_a}")
    # the files in place open, and embed as before
    wavs, lens = _clips()
    got = ex.OnnxEncoder(out_a / "m.onnx", model_sha256=sha_a)(wavs, lens)
    with torch.no_grad():
        ref = ex.load_encoder(folder_a).all_dims(wavs, lens)
    for d, g in zip(ref, got.values()):
        np.testing.assert_allclose(g, ref[d].numpy(), atol=1e-4)


@needs_openvino
def test_another_models_bin_under_the_xml_is_refused(exports, tmp_path):
    """Regression (issue 28): the .bin of another model of the same architecture (the same size)
    under an .xml ran silently; one of another size gave OpenVINO's C++ text."""
    from speechbrain_mrl.export.openvino import OpenVinoEncoder

    (_, out_a), (_, out_b) = exports["a"], exports["b"]
    assert (out_a / "m.bin").stat().st_size == (out_b / "m.bin").stat().st_size
    assert (out_a / "m.bin").read_bytes() != (out_b / "m.bin").read_bytes()
    ir = _copy(out_a, tmp_path, "m.xml")  # the .xml alone says which .bin it was exported with
    shutil.copyfile(out_b / "m.bin", ir / "m.bin")
    message = (rf"{re.escape(str(ir / 'm.bin'))} is not the weights m\.xml was exported with "
               r"\(SHA-256 [0-9a-f]{64}, the \.xml records [0-9a-f]{64}\): another model's \.bin")
    _one_line_error(lambda: OpenVinoEncoder(ir / "m.xml", precision="fp32"), message)
    (ir / "m.bin").write_bytes((out_a / "m.bin").read_bytes()[:5000])  # truncated
    _one_line_error(lambda: OpenVinoEncoder(ir / "m.xml", precision="fp32"), message)


def test_an_older_export_without_fingerprint_opens_with_a_warning(exports, tmp_path):
    """A file exported before the fingerprint was recorded (no metadata, no export record) is
    not refused: it opens with one warning saying its model is not checked."""
    folder, out = exports["a"]
    old = _without_metadata(out / "m.onnx", tmp_path / "old.onnx")
    warning = r"old\.(onnx|xml) records no model fingerprint \(exported by an older speechbrain-mrl"
    with pytest.warns(UserWarning, match=warning):
        encoder = ex.OnnxEncoder(old)
    assert encoder.model_sha256 is None
    assert encoder.min_samples == 257  # what every export before the record was made for
    wavs, lens = _clips()
    expected = ex.OnnxEncoder(out / "m.onnx")(wavs, lens)
    for e, g in zip(expected.values(), encoder(wavs, lens).values()):
        np.testing.assert_allclose(g, e, atol=1e-6)
    with warnings.catch_warnings():  # a new export opens without a word
        warnings.simplefilter("error")
        ex.OnnxEncoder(out / "m.onnx")
    if HAVE_OPENVINO:
        import openvino as ov

        from speechbrain_mrl.export.openvino import OpenVinoEncoder

        ov.save_model(ov.Core().read_model(str(old)), str(tmp_path / "old.xml"),
                      compress_to_fp16=False)  # the IR an older export wrote
        for name in ("old.onnx", "old.xml"):
            with pytest.warns(UserWarning, match=warning):
                OpenVinoEncoder(tmp_path / name, precision="fp32")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            OpenVinoEncoder(out / "m.xml", precision="fp32")


def _foreign_onnx(path, inputs, outputs):
    """A one-node ONNX model (Identity per output) of ``inputs``/``outputs``: ``[(name, shape)]``."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", [inputs[0][0]], [name]) for name, _ in outputs], "foreign",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("inputs,outputs,described", [
    ([("x", [1, 3, 4])], [("y", [1, 3, 4])], r"inputs x \(rank 3\), outputs y \(rank 3\)"),
    ([("wavs", ["b", "t"])], [("embedding_8", ["b", "t"])],
     r"inputs wavs \(rank 2\), outputs embedding_8 \(rank 2\)"),
])
def test_a_foreign_onnx_is_refused_in_one_line_naming_the_file(tmp_path, inputs, outputs, described):
    """Regression (issue 28): OpenVINO ran a foreign ONNX model (other inputs) until the first call
    failed with its C++ text ('vector::_M_range_check: __n (which is 1) >= this->size()')."""
    path = _foreign_onnx(tmp_path / "foreign.onnx", inputs, outputs)
    message = (rf"{re.escape(str(path))} is not a speechbrain-mrl export: {described}; expected "
               r"inputs wavs \[batch, time\] and wav_lens \[batch\], outputs embedding_<d> \[batch, d\]")
    _one_line_error(lambda: ex.OnnxEncoder(path), message)
    if HAVE_OPENVINO:
        from speechbrain_mrl.export.openvino import OpenVinoEncoder

        _one_line_error(lambda: OpenVinoEncoder(path, precision="fp32"), message)


@needs_openvino
def test_a_file_openvino_cannot_read_is_one_line_naming_it(tmp_path):
    """Regression (issue 28): a file that is no model gave OpenVINO's multi-line C++ text."""
    from speechbrain_mrl.export.openvino import OpenVinoEncoder

    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"not a model" * 100)
    _one_line_error(lambda: OpenVinoEncoder(path, precision="fp32"),
                    rf"{re.escape(str(path))}: OpenVINO cannot read it \(")
