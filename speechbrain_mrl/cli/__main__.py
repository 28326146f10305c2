"""``python -m speechbrain_mrl.cli <command> ...`` (and ``torchrun -m speechbrain_mrl.cli extract ...``):
the same as ``speechbrain-mrl <command> ...``."""
from speechbrain_mrl.cli.main import run

run()
