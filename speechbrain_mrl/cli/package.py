"""The ``package`` command: a hub folder from a trained model, and its upload."""
import pathlib

from huggingface_hub.utils import validate_repo_id

from speechbrain_mrl.hub.package import build_hub_folder, upload
from speechbrain_mrl.cli.options import Command



def _arguments(parser):
    parser.add_argument("--recipe_output", required=True,
                        help="train.py output folder (holding model/) or the model folder itself")
    parser.add_argument("--scores", required=True, help="scoring output folder (results.json)")
    parser.add_argument("--official_scores", default=None,
                        help="scoring of the official embedding, for a side-by-side table")
    parser.add_argument("--output_folder", required=True, help="hub-ready folder to write")
    parser.add_argument("--repo_id", default=None, help="user/name on the HuggingFace Hub")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--dry_run", action="store_true",
                        help="write the folder and list what would be uploaded, upload nothing")
    parser.add_argument("--language", default="en", help="language in the model card")
    parser.add_argument("--license", default="apache-2.0", dest="license_id",
                        help="licence in the model card")
    parser.add_argument("--datasets", nargs="+", default=None,
                        help="training data named in the card (default: what the recipe recorded)")
    parser.add_argument("--overwrite", action="store_true",
                        help="package into a folder that holds other files (they are not uploaded)")


def run_package(args):
    """The ``speechbrain-mrl package`` job: the hub folder, then the upload (unless a dry run)."""
    if args.repo_id:
        validate_repo_id(args.repo_id)
    files = build_hub_folder(args.recipe_output, args.scores, args.output_folder, args.repo_id,
                             args.official_scores, args.language, args.license_id,
                             args.datasets, args.overwrite)
    out = pathlib.Path(args.output_folder)
    target = args.repo_id or "<--repo_id not given>"
    vis = "private" if args.private else "public"
    if args.dry_run or not args.repo_id:
        print(f"[dry run] would upload to {target} ({vis}):")
        for f in files:
            print(f"  {f}  ({(out / f).stat().st_size} bytes)")
        if not args.repo_id and not args.dry_run:
            print("no --repo_id given: nothing uploaded")
        return files
    info = upload(out, args.repo_id, files, private=args.private)
    print(f"uploaded {len(files)} files to https://huggingface.co/{args.repo_id} ({vis}): {info}")
    return files


COMMANDS = {"package": Command("package a trained model for the HuggingFace Hub (and upload it)",
                               _arguments, run_package)}
