from detbatch.cli import main

raise SystemExit(main())
