"""The options of the benchmarks that score a trial list with a trained model folder.

Authors
-------
 * speechbrain-mrl developers
"""


def add_trial_list_options(parser, model_help="trained model folder"):
    """Adds ``--model_folder``, ``--manifests`` and ``--trials`` (all required) to ``parser``."""
    parser.add_argument("--model_folder", required=True, help=model_help)
    parser.add_argument("--manifests", nargs="+", required=True,
                        help="manifests holding the trial list's utterances")
    parser.add_argument("--trials", required=True, help="trial list scored at every size")
    return parser
