"""Ray job: deploy `detbatch serve` on the cluster this job was submitted to.

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/serve.py --detach --weights s3://bucket/models/run-7 --host 0.0.0.0 --replicas auto

Takes exactly the flags of `detbatch serve`. With --detach the job deploys the application, prints its URL
and ends; the application keeps running on the cluster (`serve status`, `serve shutdown`). Without it the
job runs until `ray job stop`, which deletes the application. Exits 2 for bad input or config, so
`ray job submit` fails too.
"""

import sys

from detbatch.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
