"""Ray job: run `detbatch detect` on the cluster this job was submitted to.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/detect.py --config configs/detect.yaml --input s3://bucket/images --output s3://bucket/runs/001

Takes exactly the flags of `detbatch detect`; `ray.init()` inside picks up the job's cluster. Exits
non-zero on failure (2 for bad input or config, 1 for a run that failed or stopped; a bug shows its
traceback), so `ray job submit` fails too.
"""

import sys

from detbatch.cli import main

if __name__ == "__main__":
    sys.exit(main(["detect", *sys.argv[1:]]))
