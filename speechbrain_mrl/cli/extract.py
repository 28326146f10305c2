"""The ``extract`` command: embed audio into resumable shards."""
from speechbrain_mrl.data.sources import read_sources
from speechbrain_mrl.inference.extract import extract
from speechbrain_mrl.cli.options import Command, add_sources, load_model, model_options, positive_int



def run_extract(args):
    """The ``speechbrain-mrl extract`` job: :func:`extract` of the audio the command line names."""
    rows = read_sources(args.csv, args.folder, args.files, args.file_list)
    model = load_model(args) if args.runtime != "pytorch" else None
    return extract(args.model_folder, rows, args.output_folder, args.shard_size, args.batch_size,
                   args.num_workers, args.device, args.precision, args.dtype, model=model)


def _arguments(parser):
    add_sources(parser)
    parser.add_argument("--output_folder", required=True,
                        help="output folder (a rerun resumes it)")
    parser.add_argument("--shard_size", type=positive_int, default=10000,
                        help="utterances per shard")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"],
                        help="storage of the embeddings")


COMMANDS = {"extract": Command("embed audio into resumable shards (every size from one pass)",
                               _arguments, run_extract, (model_options,))}
