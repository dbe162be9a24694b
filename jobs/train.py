"""Ray job: run `detbatch train` on the cluster this job was submitted to.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/train.py --config configs/train.yaml --name run-001

Takes exactly the flags of `detbatch train`; Ray Train places its workers on the job's cluster. Exits
non-zero on failure (2 for bad input or config, 1 for a failed run), so `ray job submit` fails too.
"""

import sys

from detbatch.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
