"""The ``score`` command: a verification trial list scored at every Matryoshka size."""
from speechbrain_mrl.cli.options import Command, load_model, model_options, positive_int
from speechbrain_mrl.data.sources import read_sources
from speechbrain_mrl.inference.scoring import score_trial_list
from speechbrain_mrl.utils.metrics import NORMS

__all__ = ["COMMANDS"]


def run_score(args):
    """The ``speechbrain-mrl score`` job: prints EER and minDCF per size; returns the results."""
    manifests = args.csv if args.csv else read_sources(folder=args.folder)
    results = score_trial_list(
        args.trials, manifests, args.output_folder, model_folder=args.model_folder,
        cohort_csv=args.cohort_csv, score_norm=args.score_norm, sizes=args.sizes,
        batch_size=args.batch_size, num_workers=args.num_workers, precision=args.precision,
        device=args.device, save_embeddings=args.save_embeddings, cohort_type=args.cohort_type,
        cohort_max_utts=args.cohort_max_utts, cohort_topk=args.cohort_topk, seed=args.seed,
        model=load_model(args))
    kinds = ["cosine"] + [k for k in NORMS if k in next(iter(results.values()))]
    print("| size | " + " | ".join(f"EER % ({k}) | minDCF@0.01 ({k})" for k in kinds) + " |")
    print("|---:|" + "---:|" * (2 * len(kinds)))
    for d, r in results.items():
        cells = [(r if k == "cosine" else r[k]) for k in kinds]
        print(f"| {d} | " + " | ".join(f"{m['EER']:.3f} | {m['minDCF@0.01']:.4f}" for m in cells)
              + " |")
    print(f"minDCF normalised (NIST); scores and reports in {args.output_folder}")
    return results


def _arguments(parser):
    audio = parser.add_mutually_exclusive_group(required=True)
    audio.add_argument("--csv", nargs="+", default=None,
                       help="manifests holding the trials' utterances (e.g. enrol.csv test.csv)")
    audio.add_argument("--folder", default=None,
                       help="folder of the trials' audio; trial entries are paths relative to it")
    parser.add_argument("--trials", required=True,
                        help="trial list: <1|0> <enrol> <test> per line (VoxCeleb format)")
    parser.add_argument("--output_folder", required=True, help="where scores and reports go")
    parser.add_argument("--cohort_csv", default=None,
                        help="manifest of training utterances: the cohort of score normalisation")
    parser.add_argument("--score_norm", nargs="*", choices=NORMS, default=list(NORMS),
                        help="score normalisations (with --cohort_csv)")
    parser.add_argument("--cohort_type", choices=["speaker", "utterance"], default="speaker",
                        help="cohort of per-speaker means or of utterances")
    parser.add_argument("--cohort_max_utts", type=positive_int, default=20000,
                        help="random cohort utterances used at most")
    parser.add_argument("--cohort_topk", type=positive_int, default=300,
                        help="closest cohort entries of adaptive s-norm")
    parser.add_argument("--sizes", type=positive_int, nargs="+", default=None,
                        help="sizes to score (default: every Matryoshka size)")
    parser.add_argument("--save_embeddings", action="store_true",
                        help="also write embeddings.pt (IDs and full-size embeddings)")
    parser.add_argument("--seed", type=int, default=1986, help="seed of the cohort sample")


COMMANDS = {"score": Command("score a verification trial list at every size (EER, minDCF)",
                             _arguments, run_score, (model_options,))}
