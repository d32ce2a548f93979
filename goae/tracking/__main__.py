"""python -m goae.tracking sync [ROOT]: tag pipeline runs with the experiment commits DVC made."""
import sys

from goae.tracking.runs import sync_exp_refs

if sys.argv[1:2] != ["sync"]:
    sys.exit("usage: python -m goae.tracking sync [ROOT]")
print(f"tagged {sync_exp_refs(sys.argv[2] if len(sys.argv) > 2 else None)} pipeline run(s)")
