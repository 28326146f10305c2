"""Packages a trained Matryoshka ReDimNet or ReDimNet2 as a HuggingFace Hub model and uploads it.

Takes a finished recipe output folder (its ``model/`` written by
``speechbrain_mrl.model.folder.write_model_folder``) and the scoring results of
``speaker_verification_cosine.py`` (``results.json``) and writes a hub-ready
folder: ``hyperparams.yaml``, the checkpoints, ``calibration.json``,
``model_info.json``, ``custom_interface.py``, ``results.json`` and a
``README.md`` model card (YAML front matter, a results table per Matryoshka
size, usage, training recipe, citation; the backbone family's name, repository,
licence and paper from :data:`FAMILIES`). Then it uploads the folder with
``huggingface_hub`` (token from ``$HF_TOKEN``), unless ``--dry_run``.

Usage::

    speechbrain-mrl package --recipe_output results/mrl_b2/1986 \\
        --scores results/scoring_b2 [--official_scores results/scoring_official] \\
        --output_folder hub/mrl-redimnet-b2 --repo_id user/mrl-redimnet-b2 [--private] [--dry_run]

Authors
-------
 * speechbrain-mrl developers
"""
import json
import math
import os
import importlib.resources
import pathlib
import shutil

from huggingface_hub import CommitOperationAdd, HfApi, get_session

from speechbrain_mrl.utils.files import atomic_output, write_text_atomic
from speechbrain_mrl.utils.json_files import read_json
from speechbrain_mrl.model.folder import MODEL_FILES, model_fingerprint, shorten_paths
from speechbrain_mrl.model.redimnet2 import is_redimnet2_config

#: What a hub repository receives beside the model folder: the repository's hub_upload/.
TEMPLATES = importlib.resources.files("speechbrain_mrl.templates")
INTERFACE_FILE = "custom_interface.py"
#: The model card, a template filled by :func:`model_card`.
CARD_TEMPLATE = "model_card.md"

#: What the model card says of each backbone family, keyed by the lobe class a model folder
#: records (``model_info.json``'s ``model``): ``name``; ``owner`` and ``repository`` of the official
#: release (the architecture and, unless trained from scratch, the backbone's weights) and its
#: ``license``; ``tag`` (hub); ``bibtex``, the papers to cite (ReDimNet2's as its official README
#: gives it; ReDimNet2 extends ReDimNet, whose paper follows).
FAMILIES = {
    "ReDimNet": dict(
        name="ReDimNet", owner="IDR&D", repository="https://github.com/IDRnD/ReDimNet",
        license="MIT", tag="redimnet", bibtex="""\
@inproceedings{yakovlev2024redimnet,
  title     = {Reshape Dimensions Network for Speaker Recognition},
  author    = {Yakovlev, Ivan and Makarov, Rostislav and Balykin, Andrei and Malov, Pavel
               and Okhotnikov, Anton and Torgashov, Nikita},
  booktitle = {Interspeech},
  year      = {2024}
}
"""),
    "ReDimNet2": dict(
        name="ReDimNet2", owner="PalabraAI", repository="https://github.com/PalabraAI/redimnet2",
        license="MIT", tag="redimnet2", bibtex="""\
@inproceedings{redimnet2_2026,
  title={ReDimNet2: Scaling Speaker Verification via Time-Pooled Dimension Reshaping},
  author={Anonymous},
  booktitle={Submitted to Interspeech 2026},
  year={2026}
}
"""),
}
FAMILIES["ReDimNet2"]["bibtex"] += FAMILIES["ReDimNet"]["bibtex"]

#: Cited by every card, after the backbone family's papers.
CITATIONS = """\
@inproceedings{kusupati2022matryoshka,
  title     = {Matryoshka Representation Learning},
  author    = {Kusupati, Aditya and others},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2022}
}
@misc{speechbrain,
  title         = {{SpeechBrain}: A General-Purpose Speech Toolkit},
  author        = {Ravanelli, Mirco and others},
  year          = {2021},
  eprint        = {2106.04624},
  archivePrefix = {arXiv}
}
"""


def backbone_family(model_info):
    """The :data:`FAMILIES` entry of a model folder's ``model_info.json``.

    The lobe class it records (``"ReDimNet2 + Matryoshka projection (speechbrain-mrl)"``),
    else its ``model_config``.

    Example
    -------
    >>> backbone_family({"model": "ReDimNet2 + Matryoshka projection (speechbrain-mrl)"})["owner"]
    'PalabraAI'
    >>> backbone_family({"model_config": {"F": 72, "causal": "none"}})["name"]
    'ReDimNet2'
    >>> backbone_family({})["name"]
    'ReDimNet'
    """
    lobe = str(model_info.get("model") or "").split(" ")[0]
    if lobe not in FAMILIES:
        lobe = "ReDimNet2" if is_redimnet2_config(model_info.get("model_config") or {}) else "ReDimNet"
    return FAMILIES[lobe]


def upstream_credit(family, backbone):
    """The model card's credit of the official release: the architecture always, the weights
    only where the recipe recorded (``extra_info["backbone"]``) that the backbone started from
    them, none for a backbone trained from scratch.

    Example
    -------
    >>> upstream_credit(FAMILIES["ReDimNet2"], {"trained_from_scratch": True})
    "The ReDimNet2 architecture comes from PalabraAI's official ReDimNet2 repository, https://github.com/PalabraAI/redimnet2 (MIT license); the backbone was trained from scratch (no official weights)."
    """
    name = family["name"]
    source = (f"{family['owner']}'s official {name} repository, {family['repository']} "
              f"({family['license']} license)")
    backbone = backbone or {}
    if backbone.get("trained_from_scratch"):
        return (f"The {name} architecture comes from {source}; the backbone was trained from "
                "scratch (no official weights).")
    if "release" in backbone:
        return (f"The {name} architecture and the backbone's initial weights (the official release "
                f"`{backbone['release']}`) come from {source}; see its license as well.")
    if "file" in backbone:
        return (f"The {name} architecture comes from {source}; the backbone was initialised from "
                f"the checkpoint `{backbone['file']}`: where it holds official {name} weights, "
                "their license applies as well.")
    return (f"The {name} architecture (and, when the backbone was initialised from them, its "
            f"weights) come from {source}; see its license as well.")


def find_model_folder(recipe_output):
    """``<recipe_output>/model`` (or ``recipe_output`` itself when it is the model folder)."""
    recipe_output = pathlib.Path(recipe_output)
    for cand in (recipe_output / "model", recipe_output):
        if (cand / "hyperparams.yaml").is_file():
            missing = [f for f in MODEL_FILES if not (cand / f).is_file()]
            if missing:
                raise FileNotFoundError(f"model folder {cand} lacks {missing}")
            return cand
    raise FileNotFoundError(
        f"no model folder in {recipe_output}: expected {recipe_output}/model/hyperparams.yaml "
        "(written by write_model_folder at the end of train.py)"
    )


#: The metrics of a size in ``results.json`` that the model card shows.
CARD_METRICS = ("EER", "minDCF@0.01", "minDCF@0.05")


def read_results(scores):
    """``results.json`` of a scoring run (folder or file) -> (results, scoring info).

    Every metric the card shows (:data:`CARD_METRICS`, plain and s-norm /
    as-norm) must be a finite number where given: a NaN EER is refused, not
    published as "nan".
    """
    path = pathlib.Path(scores)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"scoring results not found: {path}")
    data = read_json(path)
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected {{'<dim>': {{'EER': ..}}}}")
    for dim, res in data.items():
        if not str(dim).isdigit() or not isinstance(res, dict) or "EER" not in res:
            raise ValueError(f"{path}: entry {dim!r} is not a per-size result with an EER")
        for kind in ("cosine", "s-norm", "as-norm"):
            metrics = res if kind == "cosine" else res.get(kind, {})
            if not isinstance(metrics, dict):
                raise ValueError(f"{path}: {kind} of size {dim} is not a mapping of metrics")
            for name in CARD_METRICS:
                value = metrics.get(name)
                if value is not None and not (isinstance(value, (int, float))
                                              and not isinstance(value, bool)
                                              and math.isfinite(value)):
                    raise ValueError(f"{path}: {name} ({kind}) of size {dim} is {value!r}, not a "
                                     "finite number; score the model again")
    info_path = path.parent / "scoring_info.json"
    info = read_json(info_path) if info_path.is_file() else {}
    return data, info


def _fmt(x, nd):
    return "-" if x is None else f"{x:.{nd}f}"


def results_table(results, official=None, family="ReDimNet"):
    """Markdown table: one row per Matryoshka size (plus the official ``family`` embedding)."""
    kinds = ["cosine"] + [k for k in ("s-norm", "as-norm") if k in next(iter(results.values()))]
    head = "| model | size |" + "".join(
        f" EER % ({k}) | minDCF@0.01 ({k}) | minDCF@0.05 ({k}) |" for k in kinds)
    lines = [head, "|---|---:|" + "---:|" * (3 * len(kinds))]

    def row(label, dim, r):
        cells = []
        for k in kinds:
            m = r if k == "cosine" else r.get(k, {})
            cells += [_fmt(m.get("EER"), 2), _fmt(m.get("minDCF@0.01"), 4),
                      _fmt(m.get("minDCF@0.05"), 4)]
        return f"| {label} | {dim} | " + " | ".join(cells) + " |"

    for dim in sorted(results, key=int):
        lines.append(row("Matryoshka", dim, results[dim]))
    if official:
        for dim in sorted(official, key=int):
            lines.append(row(f"official {family}", dim, official[dim]))
    return "\n".join(lines)


def validation_section(model_info):
    """Model-card section: the validation EER of every size and the recommended size."""
    validation = model_info.get("validation_EER")
    if not validation:
        return ""
    dims = sorted({int(d) for eers in validation.values() for d in eers})
    lines = ["## Which size to use", "",
             "Validation EER % per size, recorded at training time (the lists the training "
             "chose its checkpoint on; not test results):", "",
             "| list | " + " | ".join(str(d) for d in dims) + " |",
             "|---|" + "---:|" * len(dims)]
    for name, eers in validation.items():
        lines.append(f"| {name} | " + " | ".join(f"{float(eers[str(d)]):.2f}" for d in dims) + " |")
    lines += ["", f"Recommended size: **{model_info['recommended_dim']}** (lowest mean validation "
              "EER; `model.recommended_dim`). Smaller prefixes trade accuracy for search speed "
              "and storage.", ""]
    return "\n".join(lines) + "\n"


def provenance_lines(backbone, data, frozen, lobe="ReDimNet"):
    """Model-card lines on the backbone and the prepared data, as the recipe recorded them.

    Arguments
    ---------
    backbone : dict or None
        ``extra_info["backbone"]``: ``release``, ``file`` or
        ``trained_from_scratch`` (plus ``unfrozen_from_epoch``).
    data : dict or None
        ``extra_info["training_data"]``: ``preparation``, ``data_folder``,
        ``train`` and ``valid`` speaker and utterance counts.
    frozen : bool or None
        ``extra_info["frozen_backbone"]``.
    lobe : str
        The lobe's family, ``ReDimNet`` or ``ReDimNet2`` (a release name such as
        ``b2-vox2-ptn`` exists in both).

    Returns
    -------
    list of str
        Markdown list items (none for what was not recorded).

    Example
    -------
    >>> provenance_lines({"release": "b2-vox2-ptn"}, {"preparation": "m.prepare_voxceleb",
    ...     "data_folder": "my_speakers", "train": {"speakers": 10, "utterances": 40},
    ...     "valid": {"speakers": 2, "utterances": 8}}, True)[1]
    '- Training data: 10 speakers, 40 utterances (validation: 2 speakers, 8 utterances), prepared by `prepare_voxceleb` from `my_speakers`'
    """
    lines = []
    if backbone:
        if backbone.get("trained_from_scratch"):
            text = "trained from scratch"
        elif "release" in backbone:
            text = f"the official {lobe} release `{backbone['release']}`"
        else:
            text = f"the official-format {lobe} checkpoint `{backbone.get('file')}`"
        if backbone.get("unfrozen_from_epoch"):
            text += f", fine-tuned from epoch {backbone['unfrozen_from_epoch']}"
        elif frozen:
            text += ", frozen (only the Matryoshka head and the classifiers trained)"
        lines.append(f"- Backbone: {text}")
    if data:
        folders = data.get("data_folder")
        folders = ", ".join(f"`{f}`" for f in (folders if isinstance(folders, list) else [folders]))
        train, valid = data.get("train", {}), data.get("valid", {})
        text = (f"- Training data: {train.get('speakers')} speakers, {train.get('utterances')} "
                f"utterances (validation: {valid.get('speakers')} speakers, "
                f"{valid.get('utterances')} utterances)")
        if data.get("preparation"):
            text += f", prepared by `{data['preparation'].rsplit('.', 1)[-1]}`"
        lines.append(text + f" from {folders}")
    return lines


def model_card(model_info, calibration, results, scoring_info, repo_id, official=None,
               language="en", license_id="apache-2.0", datasets=None):
    """README.md text with YAML front matter.

    The training data, backbone and command are those the recipe recorded in
    ``model_info.json``; data names (``datasets``, or those recorded) are
    stated only when given. The backbone family (:func:`backbone_family`) names
    the model, the official comparison row, the hub tag, the papers cited and the
    official release credited (:func:`upstream_credit`).
    """
    dims = model_info["mrl_dims"]
    cfg = model_info.get("model_config", {})
    extra = dict(model_info.get("extra_info", {}) or {})
    recorded = extra.pop("datasets", None)
    datasets = list(datasets or recorded or [])
    command = extra.pop("command", None)
    command = None if command is None else shorten_paths(command)
    family = backbone_family(model_info)
    backbone = extra.pop("backbone", None)
    provenance = provenance_lines(backbone, extra.pop("training_data", None),
                                  extra.get("frozen_backbone"), family["name"])
    trained_on = f"Trained on {', '.join(datasets)} with" if datasets else "Trained with"
    front = [
        "---",
        f"language: {language}",
        f"license: {license_id}",
        "library_name: speechbrain",
        "tags:",
        *[f"- {t}" for t in ("speechbrain", "speaker-verification", "speaker-recognition",
                             "speaker-embedding", "matryoshka", family["tag"], "pytorch")],
        *(["datasets:"] + [f"- {d}" for d in datasets] if datasets else []),
        "metrics:",
        "- eer",
        "- mindcf",
        "pipeline_tag: audio-classification",
        "---",
    ]
    thr = calibration.get("thresholds", {})
    thr_line = ", ".join(f"{d}: {float(v):.3f}" for d, v in sorted(thr.items(), key=lambda x: int(x[0])))
    details = "\n" + "\n".join(provenance) + "\n" if provenance else ""
    if extra:
        details += "\nTraining details:\n\n" + "\n".join(
            f"- {k}: {json.dumps(v) if not isinstance(v, str) else v}" for k, v in extra.items()) + "\n"
    norms = ""
    if "s-norm" in next(iter(results.values())):
        norms = f" with s-norm / adaptive s-norm (top-{scoring_info.get('cohort_topk')} cohort)"
    return (TEMPLATES / CARD_TEMPLATE).read_text().format(
        front_matter="\n".join(front) + "\n", backbone=family["name"], F=cfg.get("F"),
        C=cfg.get("C"),
        embed_dim=model_info["embed_dim"], dims=dims,
        trials=pathlib.Path(str(scoring_info.get("trials", "the evaluation trial list"))).name,
        n_trials=scoring_info.get("n_trials", "?"), norms=norms,
        results_table=results_table(results, official, family["name"]),
        thresholds=thr_line or "none",
        validation=validation_section(model_info), repo=repo_id or "<this folder>",
        mid_dim=dims[len(dims) // 2], small_dim=dims[0], trained_on=trained_on,
        command=command or "# the training command was not recorded", details=details,
        citations=f"```bibtex\n{family['bibtex']}{CITATIONS}```\n", license_id=license_id,
        upstream=upstream_credit(family, backbone))


def hub_files():
    """The files of a hub folder, and so exactly the files uploaded."""
    return sorted(MODEL_FILES + (INTERFACE_FILE, "results.json", "README.md"))


def check_out_folder(out, model, overwrite=False):
    """Refuses an output folder that is the model folder or holds files this script did not write
    (a symlink, even at a hub file's name, is not one of them)."""
    out = pathlib.Path(out)
    if out.resolve() == model.resolve():
        raise ValueError(f"--output_folder {out} is the model folder itself; give a new folder")
    if not out.exists():
        return
    foreign = sorted(str(p.relative_to(out)) for p in out.rglob("*")
                     if not (p.is_file() and not p.is_symlink() and p.parent == out
                             and p.name in hub_files()))
    if foreign and not overwrite:
        raise FileExistsError(
            f"--output_folder {out} holds files this command does not write ({foreign[:5]}"
            f"{' ...' if len(foreign) > 5 else ''}); give an empty or new folder, or "
            "--overwrite to package there anyway (only the hub files are uploaded)")


def check_scores_match(model, scoring_info, scores):
    """The scores were computed with this model folder's weights (``model_sha256``)."""
    recorded = scoring_info.get("model_sha256")
    if recorded is None:
        raise ValueError(f"{scores}: scoring_info.json records no model_sha256; score the model "
                         "with this version of speaker_verification_cosine.py --model_folder")
    if recorded != model_fingerprint(model):
        raise ValueError(f"{scores} were computed with another model than {model} (model_sha256 "
                         "differs); score this model folder before packaging it")


def copy_file(src, dst):
    """Copies the contents of ``src`` to ``dst`` through :func:`~speechbrain_mrl.utils.files.atomic_output`.

    A file or symlink at ``dst`` is replaced, never written through (``shutil.copy2``
    would overwrite the target of a link planted there).
    """
    with atomic_output(dst) as tmp:
        shutil.copyfile(src, tmp)
    return pathlib.Path(dst)


def build_hub_folder(recipe_output, scores, out, repo_id=None, official_scores=None,
                     language="en", license_id="apache-2.0", datasets=None, overwrite=False):
    """Writes the hub-ready folder; returns the list of the files it wrote (and uploads).

    Every file is written through :func:`~speechbrain_mrl.utils.files.atomic_output`
    (a symlink in ``out`` is replaced, its target untouched); the recorded
    training command is published with its absolute paths cut to their last part.
    """
    model = find_model_folder(recipe_output)
    results, scoring_info = read_results(scores)
    check_scores_match(model, scoring_info, scores)
    official = read_results(official_scores)[0] if official_scores else None
    info = read_json(model / "model_info.json")
    calibration = read_json(model / "calibration.json")
    unknown = [d for d in results if int(d) not in info["mrl_dims"]]
    if unknown:
        raise ValueError(f"scores for sizes {unknown} that the model does not have ({info['mrl_dims']})")
    check_out_folder(out, model, overwrite)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        if name != "model_info.json":
            copy_file(model / name, out / name)
    extra = info.get("extra_info") or {}
    if extra.get("command") is not None:
        info["extra_info"] = dict(extra, command=shorten_paths(extra["command"]))
    write_text_atomic(out / "model_info.json", json.dumps(info, indent=2) + "\n")
    copy_file(TEMPLATES / INTERFACE_FILE, out / INTERFACE_FILE)
    write_text_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
    write_text_atomic(out / "README.md", model_card(info, calibration, results, scoring_info,
                                                    repo_id, official, language, license_id,
                                                    datasets))
    return hub_files()


def upload(folder, repo_id, files, private=False, token=None, commit_message=None,
           endpoint=None, timeout=60.0):
    """Creates (if needed) the hub repository and commits exactly ``files`` of ``folder``.

    Every request of huggingface_hub's HTTP client (connect, each read and write:
    repository creation, commit) waits at most ``timeout`` seconds, so a stalled
    endpoint ends in an error instead of a hang; file contents sent through
    ``hf_xet`` follow that library's own limits. The default commit message names the
    backbone family of the folder's ``model_info.json``.
    """
    token = token if token is not None else os.environ.get("HF_TOKEN")
    if not token:
        raise RuntimeError("no HuggingFace token: set HF_TOKEN (a write token) to upload")
    if not commit_message:
        info = pathlib.Path(folder) / "model_info.json"
        name = backbone_family(read_json(info))["name"] if info.is_file() else "speaker-embedding"
        commit_message = f"Upload Matryoshka {name} model"
    session = get_session()
    previous = session.timeout
    session.timeout = timeout
    try:
        api = HfApi(token=token, endpoint=endpoint)
        api.create_repo(repo_id=repo_id, repo_type="model", private=bool(private), exist_ok=True)
        operations = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(pathlib.Path(folder) / f))
                      for f in files]
        return api.create_commit(repo_id=repo_id, repo_type="model", operations=operations,
                                 commit_message=commit_message)
    finally:
        session.timeout = previous
