"""The data preparation commands: manifests and trial lists from a speech corpus.

``prepare-voxceleb`` (VoxCeleb-style speaker folders), ``prepare-librispeech`` (the official
LibriSpeech layout, with download) and ``prepare-demo`` (the CPU-sized demo data). The
recipes call the same functions from their ``train.py``.
"""
from speechbrain_mrl.cli.options import Command, finite_float, positive_int
from speechbrain_mrl.data.librispeech import OPENSLR_URL, TRAIN_SPLITS, TRIAL_SPLITS, prepare_librispeech
from speechbrain_mrl.data.speech_commands import prepare_demo
from speechbrain_mrl.data.voxceleb import prepare_voxceleb

__all__ = ["COMMANDS"]


def _voxceleb_arguments(parser):
    parser.add_argument("data_folder", nargs="+", help="speaker folders (<spk>/<video>/<utt>.wav or "
                                                       "<spk>/<utt>.flac), one or several")
    parser.add_argument("--save_folder", required=True, help="where the manifests go")
    parser.add_argument("--verification_pairs_file", default=None,
                        help="VoxCeleb trial list (its speakers become enrol/test, not training)")
    parser.add_argument("--dev_split", default="utterance", choices=["utterance", "speaker"],
                        help="validation utterances of the training speakers, or held-out speakers")
    parser.add_argument("--seg_dur", type=finite_float, default=None,
                        help="cut training utterances into segments of this many seconds")
    parser.add_argument("--valid_trials", default=None,
                        help="also write a validation trial list to this file")


def run_prepare_voxceleb(args):
    """The ``prepare-voxceleb`` job; prints and returns the outputs."""
    out = prepare_voxceleb(args.data_folder, args.save_folder, args.verification_pairs_file,
                           dev_split=args.dev_split, seg_dur=args.seg_dur,
                           valid_trials=args.valid_trials)
    print(out)
    return out


def _librispeech_arguments(parser):
    parser.add_argument("data_folder", help="folder holding LibriSpeech/ (or LibriSpeech/ itself)")
    parser.add_argument("--save_folder", required=True, help="where the manifests go")
    parser.add_argument("--train_splits", nargs="+", default=["train-clean-100"],
                        choices=TRAIN_SPLITS, metavar="SPLIT",
                        help=f"training splits, any of {', '.join(TRAIN_SPLITS)}")
    parser.add_argument("--valid_splits", nargs="+", default=["dev-clean"], choices=TRIAL_SPLITS,
                        metavar="SPLIT",
                        help=f"splits of the validation list, any of {', '.join(TRIAL_SPLITS)}")
    parser.add_argument("--test_splits", nargs="*", default=["test-clean"], choices=TRIAL_SPLITS,
                        metavar="SPLIT",
                        help="splits of the test list, as --valid_splits (none: no test list)")
    parser.add_argument("--seg_dur", type=finite_float, default=None,
                        help="cut training utterances into segments of this many seconds")
    parser.add_argument("--min_duration", type=finite_float, default=1.0,
                        help="shortest utterance kept (s)")
    parser.add_argument("--max_files_per_speaker", type=positive_int, default=None,
                        help="first utterances of each training reader only")
    parser.add_argument("--trial_seg_dur", type=finite_float, default=None,
                        help="cut trial utterances into segments of this many seconds")
    parser.add_argument("--n_valid_trials", type=positive_int, default=20000,
                        help="size of the validation list")
    parser.add_argument("--n_test_trials", type=positive_int, default=20000,
                        help="size of the test list")
    parser.add_argument("--same_sex_nontarget", action="store_true",
                        help="non-target trials between readers of the same sex only")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the trial lists")
    parser.add_argument("--download", action="store_true",
                        help=f"download missing splits from {OPENSLR_URL}")


def run_prepare_librispeech(args):
    """The ``prepare-librispeech`` job; prints and returns the outputs."""
    out = prepare_librispeech(
        args.data_folder, args.save_folder, args.train_splits, args.valid_splits,
        args.test_splits, args.seg_dur, args.min_duration, args.max_files_per_speaker,
        args.trial_seg_dur, args.n_valid_trials, args.n_test_trials, args.same_sex_nontarget,
        args.seed, args.download)
    print(out)
    return out


def _demo_arguments(parser):
    parser.add_argument("--data_folder", required=True,
                        help="folder holding speech_commands/ (and librispeech_train_clean_100/)")
    parser.add_argument("--save_folder", required=True, help="where the manifests go")
    parser.add_argument("--download", action="store_true",
                        help="download the Speech Commands test set when it is missing")


def run_prepare_demo(args):
    """The ``prepare-demo`` job; prints and returns the outputs."""
    out = prepare_demo(args.data_folder, args.save_folder, download=args.download)
    print(out)
    return out


COMMANDS = {
    "prepare-voxceleb": Command("prepare manifests (and trials) from VoxCeleb-style speaker folders",
                                _voxceleb_arguments, run_prepare_voxceleb),
    "prepare-librispeech": Command("prepare LibriSpeech manifests and trial lists (and download)",
                                   _librispeech_arguments, run_prepare_librispeech),
    "prepare-demo": Command("prepare the CPU-sized demo data (Speech Commands by speaker)",
                            _demo_arguments, run_prepare_demo),
}
